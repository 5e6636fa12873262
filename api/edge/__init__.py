"""The API's asynchronous edge: hot routes, the coalescing publisher and notification-woken waits."""
