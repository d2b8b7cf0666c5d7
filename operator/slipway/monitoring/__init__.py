"""What Slipway ships for Prometheus: alert rules (and the dashboard), as data generated into the chart."""
