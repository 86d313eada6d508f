-- New events of committed ingest ranges beyond the timing watermark (four parallel arrays, end exclusive),
-- folded into one partial row per message. Per-event kinds (docs/TIMING.md, "Signal cleaning"):
--   open  kind 2 = flagged machine_open by the ESP, 1 = Apple's proxy (UA exactly 'Mozilla/5.0' or an IP in
--         Apple's 17.0.0.0/8), 0 = an ordinary mail client;
--   click kind 2 = flagged bot_click by the ESP, 1 = a security scanner's user agent, 0 = ordinary.
-- Whether an Apple-proxy open or an ordinary click is a machine's is decided at read time (message_signals.sql),
-- when the message's delivery time is known.
INSERT INTO ${database}.timing_messages
SELECT
    message_id,
    max(email),
    max(klaviyo_id),
    max(phone),
    max(external_id),
    min(if(event_type = 'delivered', occurred_at, toDateTime64('2299-12-31 00:00:00', 3, 'UTC'))),
    min(occurred_at),
    groupArrayIf(occurred_at, event_type = 'opened'),
    groupArrayIf(toUInt8(multiIf(machine_open = 1, 2, user_agent = 'Mozilla/5.0' OR startsWith(ip, '17.'), 1, 0)),
                 event_type = 'opened'),
    groupArrayIf(occurred_at, event_type = 'clicked'),
    groupArrayIf(cityHash64(url), event_type = 'clicked'),
    groupArrayIf(toUInt8(multiIf(bot_click = 1, 2,
                                 multiSearchAnyCaseInsensitive(user_agent, {scanner_agents:Array(String)}), 1, 0)),
                 event_type = 'clicked'),
    count()
FROM ${database}.events
-- one range per (topic, partition): found by position rather than by testing every range on every row
WHERE (indexOf(arrayZip({topics:Array(String)}, {partitions:Array(UInt32)}), (kafka_topic, kafka_partition)) AS range) > 0
  AND kafka_offset >= {starts:Array(UInt64)}[range] AND kafka_offset < {ends:Array(UInt64)}[range]
  AND message_id != ''
  AND event_type IN ('delivered', 'opened', 'clicked')
GROUP BY message_id
