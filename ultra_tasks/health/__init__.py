"""Health checks of the components ultra-tasks depends on."""
