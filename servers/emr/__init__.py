"""An emulator of OpenEMR's Standard REST API (`emulator`), with fault injection for the tests
(`faults`)."""
