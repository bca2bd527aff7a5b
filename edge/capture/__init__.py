"""Frames from files, folders, videos, V4L2/UVC grabbers, picamera2 and the demo clip."""
