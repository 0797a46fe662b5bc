"""
The Twisted plugin module of the example third-party store (this directory
has no C{__init__.py}, as Twisted's plugin convention wants).
"""

from examplestore import ExampleStoreFactory

exampleStore = ExampleStoreFactory()
