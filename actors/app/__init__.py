"""actors/app"""
