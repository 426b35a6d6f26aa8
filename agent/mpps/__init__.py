"""Modality Performed Procedure Step (IHE SWF RAD-6, RAD-7): what was really done, told to the
RIS through its downtime. `outbox` keeps the messages durably in order; `sender` delivers them."""
