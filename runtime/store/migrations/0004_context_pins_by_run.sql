-- ctxplane schema v4: the pins sets of a run, found without a scan (contracts.md §1).
-- get_features compares the request's pins with every pins set the store holds for the request's
-- run (platform_run_id, scenario_run_id) in the read snapshot of each answer; context_pins is keyed
-- by pins_id, so without this index each answer would scan the pins of every run in the store.
CREATE INDEX context_pins_by_run ON context_pins (platform_run_id, scenario_run_id);
