"""Trainers of the built-in toy worlds (not part of the installed package: they run once, offline,
to regenerate the weights shipped in evomm/toy/models)."""
