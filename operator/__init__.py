"""sphinxx.operator"""
