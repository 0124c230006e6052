"""actors/operate"""
