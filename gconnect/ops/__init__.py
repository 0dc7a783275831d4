"""Running the proxy: the command line, config file and reload, workers, access log, metrics."""
