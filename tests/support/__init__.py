"""Helpers the tests share: test media, a real server process, scripted engines."""
