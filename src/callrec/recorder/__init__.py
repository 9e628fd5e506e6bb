"""The live SIPREC recorder: listener, transactions, the SRS dialogs, session table, media I/O, ports, recovery."""
