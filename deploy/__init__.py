"""Deployment scripts (shell) and their Python helpers; not part of the installed package."""
