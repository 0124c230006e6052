"""actors/tables"""
