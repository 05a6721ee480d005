"""Core maths shared by several layers (data generators and methods alike); imports nothing
from `longtail` above the core layer."""
