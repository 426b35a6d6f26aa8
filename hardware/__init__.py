"""The acquisition hardware side: one driver interface, several backends.

`agent` depends on `hardware`, never the reverse; nothing here imports pydicom or pynetdicom.
"""
