"""Every name a study stores: trial parameters, trial attributes and study attributes, in one place.

The trace, the report, the notebook and the dashboard read studies by these names; a study written under other names
is not one of ours. Study attributes carry the ``saver_search:`` prefix so that they never meet a user's own.
"""

# ------------------------------------------------------------------ trial parameters (what a trial evaluates)
CANDIDATE_PARAM = "candidate"  # a pair's first stage, or a cascade's first-stage candidate
THRESHOLD_PARAM = "threshold"  # a pair's sampled threshold (threshold mode "sampled")
SHAPE_PARAM = "shape"  # a cascade family's shape label (stages, committee sizes)
SCORE_PARAM = "score"  # the confidence score the family exits on
PREFIX_PARAM = "prefix"  # the stages before the last searched one, as a label

# ------------------------------------------------------------------ trial user attributes
OUTCOME_ATTR = "outcome"  # the evaluated cascade's figures (``Outcome.to_attrs``)
CURVE_ATTR = "curve"  # a pair's sampled threshold curve, on the candidate's first trial
PATH_ATTR = "path"  # a family's best structure and its path of thresholds on the selection images
WORKER_ATTR = "worker"  # who runs the trial (host, pid, heartbeat)
QUEUED_ATTR = "queued"  # the trial was queued as a work item
RETRY_ATTR = "retry_of"  # the trial repeats a failed one (its number)
RECONCILED_ATTR = "reconciled"  # queued again by a worker that found the item missing
DUPLICATE_ATTR = "duplicate_of"  # pruned: the trial's work item was already evaluated (that trial's number)

# ------------------------------------------------------------------ study user attributes
SPEC_ATTR = "saver_search:spec"  # the StudySpec: what must match to resume
INFO_ATTR = "saver_search:info"  # the StudyInfo: facts about the data, for reports
CREATOR_ATTR = "saver_search:creator"  # who creates the study (host, pid, start), written first
READY_ATTR = "saver_search:queued"  # the creator's queue is complete (how many items), written last
CERTIFIED_ATTR = "saver_search:certified"  # the certified answer for the complete work
