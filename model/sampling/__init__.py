"""Pure helpers of token sampling, one op a module (docs/model.md, "Generation"):
`top_p.top_p_filter` (the nucleus), `next_token.next_token` (greedy or sampled choice),
`stop.find_stop` (where a stop string first appears in decoded text)."""
