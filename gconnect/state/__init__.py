"""State that outlives one tunnel and may be shared: the counters the limits,
quotas and bandwidth shares read, across the workers of one service and the
instances of a fleet (:mod:`gconnect.state.tally`)."""
