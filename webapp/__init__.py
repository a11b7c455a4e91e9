"""The Flask webapp (login, viewer links, the X-Accel gate); built in the secure-viewing issue."""
