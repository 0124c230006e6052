"""actors/serve"""
