"""The CT Radiation Dose SR (IHE REM; docs/dose-report.md): `codes` (the concepts, verbatim),
`content` (the TID 10011 tree from irradiation records), `document` (the SR header and
content), `check` (our own TID 10011 content checker), `hook` (made, checked, spooled and
routed at exam end)."""
