"""Offline stand-ins for what the cluster downloads: a tiny real-architecture Qwen2.5-VL."""
