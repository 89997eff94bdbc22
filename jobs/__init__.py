"""sphinxx.jobs"""
