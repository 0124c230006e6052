-- ctxplane schema v5: the checkpoint audit trail records every operator move, not only rewinds
-- (`ctxplane checkpoint reset` moves checkpoints to the earliest / latest / a time / an offset, and
-- forward only when the operator says so). Portable SQL; rows written before this migration keep
-- NULL in the new columns (they were rewinds, operator and reason unrecorded).
--   command: what moved it ('rewind', 'reset', 'drill')
--   operator, reason: who, and why (`--operator`, default USER@HOST; `--reason`)
--   skipped: offsets moved forward past (never read: their records are not applied), 0 for a
--     backward move (the records in between are read again and count as duplicates)
ALTER TABLE checkpoint_rewinds ADD COLUMN command TEXT;
ALTER TABLE checkpoint_rewinds ADD COLUMN operator TEXT;
ALTER TABLE checkpoint_rewinds ADD COLUMN reason TEXT;
ALTER TABLE checkpoint_rewinds ADD COLUMN skipped BIGINT;
