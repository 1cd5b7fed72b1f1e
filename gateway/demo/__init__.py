"""The demo: a sample origin (SkyRoute) and a walkthrough of paid calls through the gateway."""
