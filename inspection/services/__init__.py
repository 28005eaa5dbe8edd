"""Domain rules of the core app. Views, serializers, tasks and commands call these functions."""
