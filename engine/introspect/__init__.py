"""introspect"""
