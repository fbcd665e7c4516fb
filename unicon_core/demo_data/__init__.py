"""Builders of the demo sites from data that ships inside installed packages (nothing is
downloaded, nothing generated is committed). Entry point: :func:`prepare.prepare_demo`."""
