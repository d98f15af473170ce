"""The dataset commands' machinery: `audit`, `clean` and `merge` (`audit_clean`), files read in blocks and split into
prompt-hash shards (`shards`), rejected rows (`rejects`), outputs committed together with their report (`outputs`),
the report's W&B log and plots (`report`). What other commands share (user errors, row reading, judge arguments)
stays at the package root."""
