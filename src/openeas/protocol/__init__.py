"""The KServe v2 / Triton wire format shared by every part of OpenEAS.

Nothing in here knows about models or servers: datatypes, the error taxonomy and the
JSON + binary tensor codec.
"""
