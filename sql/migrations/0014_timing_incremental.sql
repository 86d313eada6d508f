-- What an incremental timing run needs so that its cost follows the new events, not the history
-- (docs/TIMING.md, "Incremental runs"). Every row carries the run's version: readers take rows with
-- version <= max(timing_runs.version), so a dead run's rows stay invisible (sendflowr/timing/versions.py).

-- Per person and cell (delivery hour of week, wait: sendflowr/timing/hazard.py), the messages, engaged messages
-- and delivery-hour share left that a person's statistics sum. A full build writes everyone's under its own
-- version as `base`; incremental runs add deltas (a message's new contribution, minus what it counted before)
-- to that base. Readers sum the rows of the newest committed base.
CREATE TABLE IF NOT EXISTS ${database}.timing_cells
(
    base         UInt64,  -- the full build these rows belong to
    version      UInt64,  -- the run that wrote them
    universal_id String,
    cell         UInt32,
    messages     Float32,
    events       Float32,
    fresh        Float32
)
ENGINE = MergeTree
PARTITION BY base
ORDER BY (universal_id, cell, version);

-- The state of every message that may still change (delivered within the horizon plus a lag of now): new events
-- merge into it (sql/timing/message_merge.sql), and what it currently contributes to timing_cells is kept beside
-- it (counted_*), so the next change can be applied as a difference. Newest version per message wins;
-- settled messages get a deleted row.
CREATE TABLE IF NOT EXISTS ${database}.timing_open_messages
(
    message            FixedString(16),  -- murmurHash3_128(message_id), as message_state.sql groups on it
    version            UInt64,
    deleted            UInt8,
    email              String,
    klaviyo_id         String,
    phone              String,
    external_id        String,
    delivered_ms       Int64,
    first_ms           Int64,
    opens              UInt64,
    flagged_opens      UInt64,
    first_unflagged_ms Int64,
    first_plain_ms     Int64,
    apple_ms           Array(Int64),
    click_ms           Array(Int64),
    click_url          Array(UInt64),
    click_kind         Array(UInt8),
    counted_person     String,
    counted_cell       UInt32,
    counted_engaged    Float32,
    counted_fresh      Float32
)
ENGINE = MergeTree
ORDER BY (message, version);

-- The fitted model of a full build (decay, priors, the ML prior), which incremental runs reuse (JSON).
CREATE TABLE IF NOT EXISTS ${database}.timing_models
(
    version UInt64,
    model   String
)
ENGINE = MergeTree
ORDER BY version;
