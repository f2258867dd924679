"""Models of upstream Kata behaviour, to explain and check deployments (never to plan)."""
