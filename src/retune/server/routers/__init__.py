"""The app's routers, one per area (runs and predictions, scenarios, pages); ``create_app`` includes each."""
