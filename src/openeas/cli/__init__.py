"""The ``openeas`` command line (the umbrella over the processor and, later, the platform)."""
