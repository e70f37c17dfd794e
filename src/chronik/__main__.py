import sys

from chronik.cli.main import main

sys.exit(main())
