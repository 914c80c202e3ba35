"""loomlm.lang: the frontend language (@function programs, gen/select/fork). Arrives with its own issue."""
