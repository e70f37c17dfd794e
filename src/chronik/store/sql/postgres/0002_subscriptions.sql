-- 0002 checkpoints, dead letters and active projection versions.
-- Upgrade note: adds three tables; events are untouched. Safe to apply while readers and
-- writers run (open() applies it under the migration advisory lock).
CREATE TABLE IF NOT EXISTS {schema}.checkpoints (
    name       text        COLLATE "C" NOT NULL,
    position   bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT checkpoints_pkey PRIMARY KEY (name)
);

CREATE TABLE IF NOT EXISTS {schema}.dead_letters (
    id           bigint      GENERATED ALWAYS AS IDENTITY,
    subscription text        NOT NULL,
    position     bigint      NOT NULL,
    event_id     uuid        NOT NULL,
    stream_id    text        NOT NULL,
    version      integer     NOT NULL,
    type         text        NOT NULL,
    error        text        NOT NULL,
    attempts     integer     NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT dead_letters_pkey PRIMARY KEY (id),
    CONSTRAINT dead_letters_subscription_event_key UNIQUE (subscription, event_id)
);

CREATE TABLE IF NOT EXISTS {schema}.projection_versions (
    name   text    COLLATE "C" NOT NULL,
    active integer NOT NULL,
    CONSTRAINT projection_versions_pkey PRIMARY KEY (name)
);
