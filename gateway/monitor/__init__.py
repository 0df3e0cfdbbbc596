"""Link monitoring: scheduled Pings, metrics and the status report."""
