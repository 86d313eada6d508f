"""Identity stitching: normalize identifiers, guard against over-merges, resolve people to a universal_id."""
