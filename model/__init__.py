"""sphinxx.model"""
