"""actors/drills"""
