"""Every number the dashboard depends on, in one place, each with why it has that value.

Nothing here is read from a request: requests only choose among the values listed here
(``PERIODS_WEEKS``), so a hostile query string cannot make a query larger.
"""

from __future__ import annotations

from wire import schema

# -- time ------------------------------------------------------------------------------------
DAY_S = 86400
# Days are UTC days. A device's own clock (``ts``) dates a message when it is plausible: not
# older than a store-and-forward backlog can be (a box offline for over a year has been
# replaced). Outside that (a box without RTC booting in 1970) the collector's receive time
# dates it, and so it does a message the box's clock puts after its arrival (a clock running
# ahead): none is dated after it was received, so none falls after the period's last day.
# An exam is dated by when it ended on the box (its summary's ``ended_ts``), under the same
# rules, not by when it was queued: a run a power cut killed on Friday is rebuilt and queued
# at Monday's start (store.exam_day_of).
DEVICE_CLOCK_BEHIND_S = 400 * DAY_S

# -- clinics ---------------------------------------------------------------------------------
# A message the collector stored without a clinic (its box not yet in the registry) counts
# under the first clinic the registry listed its box at (its earliest message that had one),
# in every view; a box never registered counts under this name, which no clinic id can be
# (the wire's ids are letters, digits, '.', '_' and '-').
UNREGISTERED = "(unregistered)"
# the clinics heard from but on no district's map that the clinics page names, then "and N more"
NO_DISTRICT_NAMED = 5

CLINICS_WEEKS = 8  # issue 17: exams per day per clinic over the last 8 weeks
# Up to this period the clinics plot has a cell per day, each with its hover title and
# numbers (2,800 cells for 50 clinics, 650 kB, 38 kB gzipped); a longer one has a cell per
# week, drawn as one path per colour: 104 weeks of days were 36,400 cells, 8.4 MB (478 kB
# gzipped), more than a phone on a clinic's link could load.
CLINICS_DAILY_WEEKS = 8
# A clinic silent this many weekdays in a row is named with the dates in the clinics page's
# table: past a long weekend (SILENT_AFTER_S), a box off or a link down worth a call;
# a single quiet day (a holiday) is only counted.
SILENT_SPELL_WEEKDAYS = 3
SPELLS_SHOWN = 6  # per clinic, latest first; over 2 years a few a clinic in the simulation
# A day of the daily plot is this wide (its rows are 15 px high): its 56 days, their totals
# and the clinic's name on each side fit a laptop's plot box (PLOT_BOX_W) with 118 px for
# each name (pages.CLINIC_NAME_W, about 18 characters), where 15 px would leave 90. At 15 px,
# with 106 px or more for each name, the plot was wider than the box and opened scrolled to
# its latest end, the names' start out of view (a district health officer's report).
CLINICS_DAY_W = 14
# The days the district could not hear (a stopped collector) are hatched, not white like a
# day without exams: diagonal lines this far apart, a texture that prints and needs no
# colour vision; 4 px draws three lines across a cell.
NOT_HEARD_HATCH = 4

# -- plots at a laptop's width ----------------------------------------------------------------
# An officer's laptop window, and what its page leaves a plot inside the plot's box: less a
# classic scrollbar (17 px, as on Windows; an overlay one takes none), main's padding and the
# box's border and padding on each side (static/dash.css; a test reads them there).
LAPTOP_W = 1280
PLOT_BOX_W = LAPTOP_W - 17 - 2 * 16 - 2 * (1 + 6)
# Text is not measured in the page (no script runs there): a label's width is estimated
# from these widths in ems, each the widest of its characters in DejaVu Sans (what Debian's
# browsers draw system-ui in; Segoe UI, SF and Roboto draw narrower as a rule), so a label
# never outgrows its column. 6.2 px a character (0.56 em) held mixed case, not capitals:
# "KIBAHA DISTRICT HOSPITAL..." ran out of the plot's left edge. A letter with an
# accent counts as its letter; any other character (another script, "…") as 1 em.
TEXT_EM = {" .,:;'|/\\iIjlJ": 0.34, "frt()[]-!": 0.42, "\"*_?`": 0.54,
           "abcdeghknopqsuvxyz0123456789${}": 0.64, "ABCEFKLPRSTVXYZ": 0.7,
           "DGHNOQU&": 0.79, "Mw#+<=>^~": 0.87}
TEXT_EM_OTHER = 1.0
PERIODS_WEEKS = (8, 26, 52, 104)  # the only periods a page may be asked for
# The monthly return: each clinic's exams over a calendar month (a district reports upward
# each month; the weeks above cut across months). The clinics page links this month so
# far and the three before it; any month back to MONTHLY_FIRST_YEAR may be asked for by
# its URL (an earlier one is refused: no box sent then, and an empty return reads as zero
# exams done). So is a month wholly before the district's first message, and the page
# links none: a clinic's days count from its own first message on.
MONTHLY_SHOWN = 4
MONTHLY_FIRST_YEAR = 2020
DEFAULT_WEEKS = {"clinics": 8, "completeness": 8, "quality": 26, "biometry": 26,
                 "devices": 8, "clinic": 8}

# -- sequence gaps (as central/report.py) ----------------------------------------------------
SEQ_JUMP = 1000  # a hole longer than this is a broken counter, not loss (report --seq-jump)
# A hole in the period whose earlier message is older than this before it is not found
# (queries.holes looks no further back).
HOLE_LOOKBACK_DAYS = 30
# The hole search reads runs of consecutive seqs (store.py, dash.seq_runs), per device and
# block of 7 days: an honest box's block is one run and one more per hole (a few; 60 at 2%
# loss of a health message a minute). Past this many, a box's block is read message by
# message instead (dash.seq_spill), so one sending wild seqs adds at most this many rows a
# week, whatever it sends.
SEQ_RUNS_PER_BLOCK = 256

# -- exams -----------------------------------------------------------------------------------
# A checklist slot is captured when its best frame scores at least the protocol's
# min_quality; both shipped protocols use 0.5 (edge/exam/protocols.toml). Central does not
# import edge, so the figure is repeated here for the quality page's "below capture" share.
MIN_QUALITY = 0.5
# A clinic (the quality page's table) or a cell of its heatmap (a plane, a week) is flagged
# only when its share of best frames under MIN_QUALITY is clearly above the district's own
# share over the period: the Wilson score interval of its share at this confidence lies
# wholly above the district's, the control limits of a funnel plot (Spiegelhalter,
# "Funnel plots for comparing institutional performance", Stat Med 2005;24:1185-1202; the
# Wilson interval: Wilson, JASA 1927;22:209-212). A fixed 20% flagged chance: at 20 exams
# and a true 12%, about one cell in five reaches 20% by luck, so the officer coached
# clinics that were no worse than the rest. 95% as a funnel plot's inner limits: of the
# cells no worse than the district, about one in forty is still flagged.
QUALITY_FUNNEL_CONFIDENCE = 0.95
# The plane a clinic's best frames fall under MIN_QUALITY most often: by share, among the
# planes it found this often (2 of 2 is no pattern); by count, the most scanned plane came
# first everywhere.
QUALITY_PLANE_MIN_FRAMES = 10
# The minimum n of the funnel rule above. A cell of the quality heatmap (a plane, a week)
# is judged, and a clinic of its table can be flagged, only when this many exams or more
# found the plane (best frames, for a clinic): under 10, one exam moves the share by more
# than 10 points, the width of the scale's classes, so a cell would change colour with one
# scan. Fewer is drawn "too few to judge" (hatched), never in an alarm colour: a viewer's
# only alarm on 26 weeks was a week so far of 4 exams (an officer's walk).
QUALITY_CELL_MIN_EXAMS = 10
NOT_A_VIEW = schema.NOT_A_VIEW  # as central/report.py and the device's summary shedding

# -- the collectors ---------------------------------------------------------------------------
# A subscribed collector marks itself alive every minute (central/collector.py
# `alive_every_s`). With none for this long the pages say the district hears nothing, and a
# box silent since then is not counted silent: a stopped collector looked like every clinic
# failing at once, and sent the officer's staff to all of them.
COLLECTOR_QUIET_S = 15 * 60.0
# Every arrival is stamped by the collector's clock. Where this server's clock differs from
# it by more than this (each measured against the database server's clock), the pages count
# time by the collector's and say so: a dashboard host 30 min ahead took a running collector
# for stopped. Under it: the two reads' own latency and ordinary NTP error.
COLLECTOR_CLOCK_SKEW_S = 60.0

# -- devices: what makes a box need a visit --------------------------------------------------
SILENT_AFTER_S = 3 * DAY_S  # a clinic box that scans most weekdays: 3 days is a long weekend
# A box whose uplink last said "online" (its retained status: a box that goes away says
# "offline", or the broker says it for it within a keepalive) but that has sent nothing for
# this many of its health intervals, and at least ONLINE_SILENT_MIN_S: connected with its
# program stuck (a green "online" stood beside "last seen 39 h ago"; an officer's walk).
ONLINE_SILENT_INTERVALS = 3
ONLINE_SILENT_MIN_S = 2 * 3600.0
LOW_DISK_MB = 500.0  # the journal sheds frames near full; 500 MB is about a week of frames
HOT_C = 80.0  # Raspberry Pi 5 starts throttling at 80-85 C (Raspberry Pi documentation)
BACKLOG_WARN = 100  # messages queued on the box: about a clinic day of exams and health
# Exams one box ended on one day (by the exam's own date, so a backlog sent late is no
# burst): a busy clinic scans tens of women a day, each an exam or two. Far more is a box
# that splits one scan into many (a flickering image, a loose cable) or sends exams that are
# not its clinic's, and its clinic's figures on every page count them all.
EXAMS_PER_DAY_WARN = 300
# Messages missing in the period's sequence holes, as a share of what the box sent: a few in
# a thousand go missing on any rural link; more than 1% is a link or an outbox to look at.
MISSING_WARN_SHARE = 0.01
# A box's clock this far off the collector's (store.clock_offset): a Pi without its RTC
# battery and no network time boots at the time it was switched off, and its exams are
# then dated days or weeks early (the clinic looks silent while it works). Both signals
# arrive within seconds on a live link, so an hour is far above their noise (a health
# message waits for its next interval at most once the link is back).
# The rollup moves a box's exams by its lag from the same threshold (store._ClockLags):
# under it the lag is the link's delay, not the clock's error.
CLOCK_OFF_FLAG_S = 3600.0
# A box's clock set forward from the midwife's page (edge/web/clock.py) is said on the
# devices page this long after: the exams it had sent before were dated by a clock behind (the
# rollup counted those that came with its clock's signals by its lag), a month of them at
# most in a period the officer looks at.
CLOCK_SET_SHOWN_S = 30 * DAY_S
CLOCK_SET_MAX_S = 3650 * DAY_S  # a box moves it at most this far (edge/web/settings.py)

# -- devices and clinics: heads the box's set-up refused ------------------------------------
# The head statuses that refuse every head whatever the midwife scans (edge/models/
# biometry.py; central does not import edge, and a test holds the two together): the box's
# set-up, for a technician, not her scanning, for coaching. An exam that measured no head
# and declined some for one of these counts under the one of most frames
# (store.setup_refusal). The words finish "heads not measured in N of M exams: ...", as the
# midwife's exam card says each (edge/web/i18n/en.json "exam.not_measured_*").
SETUP_REFUSALS = {
    "pixel_size_missing": "the box has no calibration for the scanner (its pixel size)",
    "pixel_size_absurd": "the box's calibration for the scanner (its pixel size) is impossible",
    "ruler_unread": "the scanner's depth scale could not be read on the screen",
    "screen_stretched": "the picture is stretched by the video grabber"}
# A box or clinic is flagged once this many exams of the period had their heads refused for
# one set-up reason: one exam alone can be one odd scan (a zoom that hid the depth scale);
# two say the box does it.
SETUP_FAULT_MIN_EXAMS = 2
# A box whose heads were measured before it could check the picture's shape (the exam
# summary's biometry.shape, from the probe's fan: edge/models/fan.py) in SETUP_FAULT_MIN_EXAMS or
# more is flagged on the devices page, as something to check: its figures may be right, but
# a grabber stretching the picture would have made every head wrong, unseen.
SHAPE_UNCHECKED_ADVICE = ("at the next visit show the probe's whole fan once, without zoom "
                          "(the box then checks the picture's shape and remembers it)")

# -- devices: their model-update (fleet) errors ----------------------------------------------
FLEET_ERROR_CHARS = 160  # as the wire's health.fleet.error (and the device's own cut)
# Distinct errors kept per device and week (store.py; more are counted as one): a box's
# errors change with each bundle offered and each try (a download's "2 of 3"), about a
# handful a week; 20 keeps a bad week whole and a hostile box's flood small.
FLEET_ERRORS_PER_WEEK = 20
FLEET_ERRORS_SHOWN = 20  # per device on the devices page, latest first; the CSV has all

# -- access ----------------------------------------------------------------------------------
# scrypt (hashlib, RFC 7914): N=2^15, r=8 needs 32 MiB and ~0.06 s per check on the build
# box; slow enough that a stolen users table is costly to brute-force.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
PASSWORD_MIN, PASSWORD_MAX = 10, 256
SESSION_IDLE_S = 60 * 60  # an officer's session unused for an hour ends
SESSION_MAX_S = 12 * 3600  # none lasts longer than a working day
SESSION_TOUCH_S = 60  # the last-use time is written at most once a minute per session
LOGIN_FREE_FAILURES = 5  # then each further wrong password from one address waits
LOGIN_BRAKE_S, LOGIN_BRAKE_MAX_S = 2.0, 900.0  # doubling from 2 s up to 15 min
# One account name, from every address together: then the same doubling. A name's count
# is forgotten an hour after its last wrong password. Browsers that logged into it before
# (the known-browser cookie) are held by neither this nor the server's limit, nor their
# address's: their own wrong passwords are counted per account as an address's are.
LOGIN_ACCOUNT_FREE_FAILURES = 10
LOGIN_ACCOUNT_FORGET_S = 3600.0
LOGIN_SERVER_MAX, LOGIN_SERVER_WINDOW_S = 100, 600.0  # wrong passwords, whole server
KNOWN_COOKIE = "sonoedge_dash_known"
KNOWN_COOKIE_MAX_AGE_S = 365 * 24 * 3600
KNOWN_TOKENS = 4  # accounts a shared browser is known for
KNOWN_COOKIE_CHARS = KNOWN_TOKENS * 65
COOKIE = "sonoedge_dash"

# -- requests --------------------------------------------------------------------------------
MAX_BODY = 4096  # the login form is the only body
BODY_TIMEOUT_S = 10.0  # a login form announced but not sent is answered 408, not waited for
MAX_PARAM_CHARS = 64  # an id is at most 64 characters (wire schema)
QUERY_THREADS = 3  # DB work runs here, never on the event loop
# A page's numbers change only when the rollup adds messages: a page is made once per
# rollup pass that changed something (and at least once a minute, for "3 days ago"), then
# served from memory to every officer who asks. Bounded, least recently used out first.
CACHE_MAX_S = 60.0
CACHE_ENTRIES = 256
# The collector comes first on a shared box: the dashboard runs at a lower CPU priority
# (nice 10), so a busy dashboard slows itself, not ingestion (measured in bench/dashboard.py).
SERVE_NICE = 10
OUTLIERS_SHOWN = 200  # the page lists at most this many; the CSV has them all
# The dashboard's and the report's words for the protocols the boxes ship (edge/exam/protocols.toml;
# the district never imports the device's code, and a test holds the two together). A
# protocol not named here is shown by its own name.
PROTOCOL_TITLES = {"biometry": "head measurement",
                   "second-trimester": "second-trimester screen (13 planes)"}


def protocol_title(protocol: str) -> str:
    """The district's words for a protocol's name, as the pages and the report give it; as
    it was sent where it has none."""
    return PROTOCOL_TITLES.get(protocol, protocol)


# The quality criteria in the midwife's own words, as her page says them when an exam names
# them among its deficiencies (edge/web/i18n/en.json "deficiency.*"; a test holds the two
# together): "sector cut" or "ellipse regular" needed an engineer (an officer's walk). A
# criterion not named here is shown by its own name.
DEFICIENCY_WORDS = {
    "content": "No ultrasound image", "frozen": "Image frozen",
    "gain": "Gain too low or too high", "contrast": "Washed-out image",
    "sharpness": "Blurred", "noise": "Grainy image", "shadow": "Shadow over the image",
    "sector_cut": "Anatomy off the edge", "plane_confident": "No standard plane",
    "head_found": "No single skull outline", "head_inside": "Part of the head off the screen",
    "zoom": "Head too small on the screen", "ellipse_regular": "Skull outline not a clean oval",
    "centred": "Head not centred"}
# A criterion name not among DEFICIENCY_WORDS (the device's catalogue, edge/models/
# quality_rules.toml) is counted under this one name, once an exam however many such names
# it has: the wire lets a box name any ^[a-z_]{1,24}$, and one box's 5,000 exams with four
# made-up names each grew the quality page from 6.7 kB to 10.8 MB (20,000 bars) for every
# officer of the district. The rollup, the page and the CSV then hold at most the known names
# and this one. In parentheses: no wire name can be it.
DEFICIENCY_OTHER = "(other)"
DEFICIENCY_OTHER_WORDS = "other (names this dashboard does not know)"  # the CSV, the hover
# its bar's label: the words above are 262 px wide, past the chart's 214 px for a label
DEFICIENCY_OTHER_LABEL = "Other (names not known here)"


def deficiency_words(name: str) -> str:
    """A criterion in the midwife's words, "" for a name she has none for; the rollup's one
    row for the names the dashboard does not know (DEFICIENCY_OTHER) says what it is."""
    if name == DEFICIENCY_OTHER:
        return DEFICIENCY_OTHER_WORDS
    return DEFICIENCY_WORDS.get(name, "")


def deficiency_label(name: str) -> str:
    """A criterion as a chart's bar or a report's line names it: the midwife's words, else
    its own name with spaces (a name the dashboard does not know)."""
    return deficiency_words(name) or name.replace("_", " ")


# Why a midwife withdrew an exam (wire/schemas/withdrawal.schema.json's reasons), in the
# words the pages and the report give it
WITHDRAWAL_WORDS = {"mistake": "started by mistake", "test_scan": "a test scan",
                    "wrong_woman": "the wrong woman", "two_women": "two women in one exam"}


def withdrawal_words(reason: str) -> str:
    """Why the midwife withdrew an exam, in words; a reason not known here as it came."""
    return WITHDRAWAL_WORDS.get(reason, reason)
# Protocols with a chart of their own on the completeness page, most exams first; a box
# names its protocol, so their number has no bound but this. The CSV has them all.
PROTOCOLS_SHOWN = 6

# -- rollup ----------------------------------------------------------------------------------
REFRESH_EVERY_S = 5.0  # new messages reach the pages within this (plus a batch)
REFRESH_BATCH = 2000  # messages per rollup transaction: a short write, a short read
# Batches per pass of the rollup thread before the pages learn what it has so far: a new
# dashboard on a year of messages rolls up for tens of seconds (392,000 seeded: 20 s), and
# its pages said "0 exams" meanwhile; 25 batches is about a second.
REFRESH_STEP_BATCHES = 25
# Messages received up to this long before the newest one rolled up are looked at again:
# a second collector's clock may lag, and a batch is stamped before it commits.
REFRESH_OVERLAP_S = 300.0
