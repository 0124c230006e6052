"""actors/ingest"""
