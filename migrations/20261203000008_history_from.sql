-- `maintain` prunes balance points no reader needs any more (before the
-- account's checkpoint and the correction window, keeping the one in force):
-- history_from is the as_of of the earliest point kept. NULL: the whole
-- history is kept. A computation from the whole history (close-day without
-- D-1's row, reconcile --recompute) refuses an account where it is set.
ALTER TABLE accounts ADD COLUMN history_from timestamptz;
