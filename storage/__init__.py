"""sphinxx.storage"""
