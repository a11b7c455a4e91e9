"""Stand-ins for the hospital's systems, for the local stack and the tests: the FHIR server
(`fhir/`, on Node) and the OpenEMR emulator (`emr/`). They import nothing of NeuroNova but
`common`."""
