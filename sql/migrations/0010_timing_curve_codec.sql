-- timing_curves.curve stored uncompressed: LZ4 shrank the 168 float32 values by ~9% and cost every write
-- more CPU than anything else in it (200k curves: 0.82 -> 0.57 s of server CPU per full write); reads of raw
-- floats are no slower (docs/TIMING.md, "Speed"). Existing parts keep their codec until merged.
ALTER TABLE ${database}.timing_curves MODIFY COLUMN curve Array(Float32) CODEC(NONE);
