-- Merge message states (message_state.sql) of one message that came from different ingest ranges (an
-- incremental run: the events committed since the last run, and the state kept for messages still open,
-- timing_open_messages): the same aggregates, combined. The states placeholder is a UNION ALL of state rows.
SELECT
    message,
    max(email) AS email, max(klaviyo_id) AS klaviyo_id, max(phone) AS phone, max(external_id) AS external_id,
    min(delivered_ms) AS delivered_ms,
    min(first_ms) AS first_ms,
    sum(opens) AS opens,
    sum(flagged_opens) AS flagged_opens,
    min(first_unflagged_ms) AS first_unflagged_ms,
    min(first_plain_ms) AS first_plain_ms,
    arraySlice(arraySort(groupArrayArray(apple_ms)), 1, 2) AS apple_ms,
    -- the three click arrays are concatenated in the same row order, so they stay aligned
    groupArrayArray(click_ms) AS click_ms,
    groupArrayArray(click_url) AS click_url,
    groupArrayArray(click_kind) AS click_kind
FROM (${states})
GROUP BY message
