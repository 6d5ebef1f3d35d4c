"""De-identification of DICOM datasets and BIDS sidecars (DICOM PS3.15 Annex E).

Derived objects (NIfTI + JSON sidecars from ``oncomri convert --deidentify``;
Parametric Map, SEG and SR files from :mod:`oncomri.io.dicom_export`) may
leave the hospital only without protected health information (PHI).
:class:`Deidentifier` implements the *Basic Application Level
Confidentiality Profile* of DICOM PS3.15 Annex E.1 with the *Retain
Longitudinal Temporal Information with Modified Dates Option* (E.3.6), and
optionally the Retain Patient Characteristics (E.3.4), Retain Device
Identity (E.3.3), Retain Institution Identity (E.3.3a), Clean Descriptors
(E.3.11) and Clean Structured Content (E.3.10) Options.

What happens to a dataset
-------------------------
- Every attribute listed in PS3.15 Table E.1-1 gets its Basic Profile action
  (:data:`BASIC_PROFILE`), wherever it occurs, sequences included:
  ``X`` remove, ``Z`` zero-length (or a dummy), ``D`` dummy, ``U`` new UID,
  ``K`` keep, ``C`` clean. Where the table offers a choice (``X/Z``,
  ``X/D``, ``Z/D``, ``X/Z/D``) the choice follows the attribute's Type in
  the IOD of the dataset's SOP Class (Type 1 -> ``D``, Type 2 -> ``Z``,
  Type 3 or absent from the IOD -> ``X``; PS3.15 Table E.1-1a), looked up
  in the module tables that highdicom ships (an unknown SOP Class gets
  ``D`` where offered, else ``Z``); for ``X/Z/U*`` (Referenced
  Image Sequence, Source Image Sequence) the sequence is kept and every UID
  in it is replaced, so that derived objects still point to their
  (de-identified) sources.
- Patient's Name and Patient ID become a pseudonym (``'sub-'`` + 8 hex
  digits of HMAC-SHA256(secret, original Patient ID)); ``Z`` allows such a
  dummy value.
- All instance UIDs become ``2.25.<integer>`` (a UUID, PS3.5 B.2) from
  HMAC-SHA256(secret, original UID): the same UID maps to the same new UID
  in every dataset, run and process that uses the same secret, so Study,
  Series, Frame of Reference and SOP Instance references between objects
  stay valid. UIDs defined by DICOM itself (root ``1.2.840.10008``) and
  class/scheme UIDs (SOP Class, Transfer Syntax, Coding Scheme ...) are
  kept.
- Dates (DA, and the date part of DT) move back by a per-subject number of
  whole days, derived from HMAC-SHA256(secret, Patient ID) in [-365, -1]
  (or given by ``date_shift_days``), so intervals between the sessions of
  one subject are preserved exactly. Times (TM, and the time part and
  UTC offset of DT) are kept: after a whole-day shift they no longer
  identify a moment. Patient's Birth Date is emptied, not shifted.
- Private attributes are removed (the Retain Safe Private Option is not
  implemented), as are curves (50xx,xxxx) and whole overlay groups
  (60xx,xxxx: the table removes Overlay Data and Overlay Comments; the
  rest of an overlay is useless without them), group lengths, and
  attributes with an unknown VR (UN).
- Beyond the table, as a safety net: any other person name (PN) is treated
  as ``X/Z/D``, any other date is shifted, any other instance UID replaced,
  AE titles and URLs removed, and any other kept text is cleaned of the
  identifiers found in the dataset itself (the patient's name parts, IDs,
  accession number, birth date, address, names of staff). Inside a sequence whose action is ``D`` (e.g. Content Sequence
  without the Clean Structured Content Option) all text is replaced by a
  dummy; inside an ``X/Z/U*`` sequence free text is.
- Patient Identity Removed (0012,0062) = YES, De-identification Method
  (0012,0063) and De-identification Method Code Sequence (0012,0064) with
  the CID 7050 codes of the profile and options used, and Longitudinal
  Temporal Information Modified (0028,0303) = MODIFIED are set (PS3.3
  C.7.1.1, C.12.1).
- Acquisition parameters needed for quantification (Echo Time, Repetition
  Time, Flip Angle, Magnetic Field Strength, pixel spacing, geometry,
  Manufacturer, model, software versions, Body Part Examined, Patient
  Position ...) are not in Table E.1-1 and are kept.

Pixel data are not examined (the Clean Pixel Data Option is not
implemented): a dataset that declares Burned In Annotation (0028,0301) YES
is refused unless ``allow_burned_in_annotation=True``. Recognizable visual
features (faces in 3D head scans) are not removed.

References
----------
DICOM PS3.15 2024 Annex E "Attribute Confidentiality Profiles", Table E.1-1
"Application Level Confidentiality Profile Attributes" and Table E.1-1a;
PS3.16 CID 7050 "De-identification Method". Krawczyk H, Bellare M,
Canetti R. HMAC: keyed-hashing for message authentication. RFC 2104, 1997.
ITU-T X.667 and RFC 9562 for the ``2.25`` UUID-derived UIDs.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import hmac
import re
import types
from collections.abc import Callable, Mapping
from functools import lru_cache

from ..core.errors import ValidationError

__all__ = [
    "Deidentifier",
    "BASIC_PROFILE",
    "EXTRA_ACTIONS",
    "DUMMY",
]

#: Dummy value written where an action ``D`` needs a non-empty value.
DUMMY = "ANONYMIZED"

#: Coding scheme of the dummy code written into identifying code sequences.
_DUMMY_SCHEME = "99ONCOMRI"

_DICOM_UID_ROOT = "1.2.840.10008."

# --------------------------------------------------------------------------- the table
#
# PS3.15 Table E.1-1, column "Basic Profile", as data: tag -> action.
# Written for oncomri from the standard (grouped by action; keyword in the
# comment). Repeating groups (Curve Data 50xx,xxxx; Overlay Data 60xx,3000;
# Overlay Comments 60xx,4000) and private attributes (odd groups) are rules
# in the code, not rows here.

_REMOVE = (
    0x00001000,  # AffectedSOPInstanceUID
    0x00080015,  # InstanceCoercionDateTime
    0x00080024,  # OverlayDate
    0x00080025,  # CurveDate
    0x00080034,  # OverlayTime
    0x00080035,  # CurveTime
    0x00080081,  # InstitutionAddress
    0x00080092,  # ReferringPhysicianAddress
    0x00080094,  # ReferringPhysicianTelephoneNumbers
    0x00080096,  # ReferringPhysicianIdentificationSequence
    0x0008009D,  # ConsultingPhysicianIdentificationSequence
    0x00080201,  # TimezoneOffsetFromUTC
    0x0008103E,  # SeriesDescription
    0x00081030,  # StudyDescription
    0x00081040,  # InstitutionalDepartmentName
    0x00081041,  # InstitutionalDepartmentTypeCodeSequence
    0x00081048,  # PhysiciansOfRecord
    0x00081049,  # PhysiciansOfRecordIdentificationSequence
    0x00081050,  # PerformingPhysicianName
    0x00081052,  # PerformingPhysicianIdentificationSequence
    0x00081060,  # NameOfPhysiciansReadingStudy
    0x00081062,  # PhysiciansReadingStudyIdentificationSequence
    0x00081080,  # AdmittingDiagnosesDescription
    0x00081084,  # AdmittingDiagnosesCodeSequence
    0x00081120,  # ReferencedPatientSequence
    0x00082111,  # DerivationDescription
    0x00084000,  # IdentifyingComments
    0x00100021,  # IssuerOfPatientID
    0x00100032,  # PatientBirthTime
    0x00100050,  # PatientInsurancePlanCodeSequence
    0x00100101,  # PatientPrimaryLanguageCodeSequence
    0x00100102,  # PatientPrimaryLanguageModifierCodeSequence
    0x00101000,  # OtherPatientIDs
    0x00101001,  # OtherPatientNames
    0x00101002,  # OtherPatientIDsSequence
    0x00101005,  # PatientBirthName
    0x00101010,  # PatientAge
    0x00101020,  # PatientSize
    0x00101030,  # PatientWeight
    0x00101040,  # PatientAddress
    0x00101050,  # InsurancePlanIdentification
    0x00101060,  # PatientMotherBirthName
    0x00101080,  # MilitaryRank
    0x00101081,  # BranchOfService
    0x00101090,  # MedicalRecordLocator
    0x00101100,  # ReferencedPatientPhotoSequence
    0x00102000,  # MedicalAlerts
    0x00102110,  # Allergies
    0x00102150,  # CountryOfResidence
    0x00102152,  # RegionOfResidence
    0x00102154,  # PatientTelephoneNumbers
    0x00102155,  # PatientTelecomInformation
    0x00102160,  # EthnicGroup
    0x00102180,  # Occupation
    0x001021A0,  # SmokingStatus
    0x001021B0,  # AdditionalPatientHistory
    0x001021C0,  # PregnancyStatus
    0x001021D0,  # LastMenstrualDate
    0x001021F0,  # PatientReligiousPreference
    0x00102297,  # ResponsiblePerson
    0x00102299,  # ResponsibleOrganization
    0x00104000,  # PatientComments
    0x00120071,  # ClinicalTrialSeriesID
    0x00120072,  # ClinicalTrialSeriesDescription
    0x00120051,  # ClinicalTrialTimePointDescription
    0x00120082,  # ClinicalTrialProtocolEthicsCommitteeApprovalNumber
    0x0016002B,  # MakerNote
    0x0016004B,  # DeviceSettingDescription
    0x0016004D,  # CameraOwnerName
    0x0016004E,  # LensSpecification
    0x0016004F,  # LensMake
    0x00160050,  # LensModel
    0x00160051,  # LensSerialNumber
    *range(0x00160070, 0x0016008F),  # GPS* (GPSVersionID ... GPSDifferential)
    0x00181004,  # PlateID
    0x00181005,  # GeneratorID
    0x00181007,  # CassetteID
    0x00181008,  # GantryID
    0x00181009,  # UniqueDeviceIdentifier
    0x0018100A,  # UDISequence
    0x00184000,  # AcquisitionComments
    0x00185011,  # TransducerIdentificationSequence
    0x00189185,  # RespiratoryMotionCompensationTechniqueDescription
    0x00189373,  # XRayDetectorLabel
    0x0018937B,  # MultienergyAcquisitionDescription
    0x0018937F,  # DecompositionDescription
    0x00189424,  # AcquisitionProtocolDescription
    0x00189937,  # RequestedSeriesDescription
    0x0018A003,  # ContributionDescription
    0x00203401,  # ModifyingDeviceID
    0x00203406,  # ModifiedImageDescription
    0x00204000,  # ImageComments
    0x00209158,  # FrameComments
    0x00284000,  # ImagePresentationComments
    0x00320012,  # StudyIDIssuer
    0x00321020,  # ScheduledStudyLocation
    0x00321021,  # ScheduledStudyLocationAETitle
    0x00321030,  # ReasonForStudy
    0x00321032,  # RequestingPhysician
    0x00321033,  # RequestingService
    0x00321066,  # ReasonForVisit
    0x00321067,  # ReasonForVisitCodeSequence
    0x00321070,  # RequestedContrastAgent
    0x00324000,  # StudyComments
    0x00380004,  # ReferencedPatientAliasSequence
    0x00380010,  # AdmissionID
    0x00380011,  # IssuerOfAdmissionID
    0x00380014,  # IssuerOfAdmissionIDSequence
    0x0038001E,  # ScheduledPatientInstitutionResidence
    0x00380020,  # AdmittingDate
    0x00380021,  # AdmittingTime
    0x00380040,  # DischargeDiagnosisDescription
    0x00380050,  # SpecialNeeds
    0x00380060,  # ServiceEpisodeID
    0x00380061,  # IssuerOfServiceEpisodeID
    0x00380062,  # ServiceEpisodeDescription
    0x00380064,  # IssuerOfServiceEpisodeIDSequence
    0x00380300,  # CurrentPatientLocation
    0x00380400,  # PatientInstitutionResidence
    0x00380500,  # PatientState
    0x00384000,  # VisitComments
    0x00400001,  # ScheduledStationAETitle
    0x00400002,  # ScheduledProcedureStepStartDate
    0x00400003,  # ScheduledProcedureStepStartTime
    0x00400004,  # ScheduledProcedureStepEndDate
    0x00400005,  # ScheduledProcedureStepEndTime
    0x00400006,  # ScheduledPerformingPhysicianName
    0x00400007,  # ScheduledProcedureStepDescription
    0x00400009,  # ScheduledProcedureStepID
    0x0040000B,  # ScheduledPerformingPhysicianIdentificationSequence
    0x00400010,  # ScheduledStationName
    0x00400011,  # ScheduledProcedureStepLocation
    0x00400012,  # PreMedication
    0x00400241,  # PerformedStationAETitle
    0x00400242,  # PerformedStationName
    0x00400243,  # PerformedLocation
    0x00400244,  # PerformedProcedureStepStartDate
    0x00400245,  # PerformedProcedureStepStartTime
    0x00400250,  # PerformedProcedureStepEndDate
    0x00400251,  # PerformedProcedureStepEndTime
    0x00400253,  # PerformedProcedureStepID
    0x00400254,  # PerformedProcedureStepDescription
    0x00400275,  # RequestAttributesSequence
    0x00400280,  # CommentsOnThePerformedProcedureStep
    0x00400310,  # CommentsOnRadiationDose
    0x0040050A,  # SpecimenAccessionNumber
    0x0040051A,  # ContainerDescription
    0x00400600,  # SpecimenShortDescription
    0x00400602,  # SpecimenDetailedDescription
    0x004006FA,  # SlideIdentifier
    0x00401001,  # RequestedProcedureID
    0x00401002,  # ReasonForTheRequestedProcedure
    0x00401004,  # PatientTransportArrangements
    0x00401005,  # RequestedProcedureLocation
    0x0040100A,  # ReasonForRequestedProcedureCodeSequence
    0x00401010,  # NamesOfIntendedRecipientsOfResults
    0x00401011,  # IntendedRecipientsOfResultsIdentificationSequence
    0x00401102,  # PersonAddress
    0x00401103,  # PersonTelephoneNumbers
    0x00401104,  # PersonTelecomInformation
    0x00401400,  # RequestedProcedureComments
    0x00402001,  # ReasonForTheImagingServiceRequest
    0x00402008,  # OrderEnteredBy
    0x00402009,  # OrderEntererLocation
    0x00402010,  # OrderCallbackPhoneNumber
    0x00402011,  # OrderCallbackTelecomInformation
    0x00402400,  # ImagingServiceRequestComments
    0x00403001,  # ConfidentialityConstraintOnPatientDataDescription
    0x00404005,  # ScheduledProcedureStepStartDateTime
    0x00404008,  # ScheduledProcedureStepExpirationDateTime
    0x00404010,  # ScheduledProcedureStepModificationDateTime
    0x00404011,  # ExpectedCompletionDateTime
    0x00404025,  # ScheduledStationNameCodeSequence
    0x00404027,  # ScheduledStationGeographicLocationCodeSequence
    0x00404028,  # PerformedStationNameCodeSequence
    0x00404030,  # PerformedStationGeographicLocationCodeSequence
    0x00404034,  # ScheduledHumanPerformersSequence
    0x00404035,  # ActualHumanPerformersSequence
    0x00404036,  # HumanPerformerOrganization
    0x00404037,  # HumanPerformerName
    0x00404050,  # PerformedProcedureStepStartDateTime
    0x00404051,  # PerformedProcedureStepEndDateTime
    0x00404052,  # ProcedureStepCancellationDateTime
    0x0040A078,  # AuthorObserverSequence
    0x0040A07A,  # ParticipantSequence
    0x0040A07C,  # CustodialOrganizationSequence
    0x0040A192,  # ObservationDateTrial
    0x0040A193,  # ObservationTimeTrial
    0x0040A307,  # CurrentObserverTrial
    0x0040A352,  # VerbalSourceTrial
    0x0040A353,  # AddressTrial
    0x0040A354,  # TelephoneNumberTrial
    0x0040A358,  # VerbalSourceIdentifierCodeSequenceTrial
    0x00500020,  # DeviceDescription
    0x00500021,  # LongDeviceDescription
    0x0050001B,  # ContainerComponentID
    0x00880200,  # IconImageSequence
    0x00880904,  # TopicTitle
    0x00880906,  # TopicSubject
    0x00880910,  # TopicAuthor
    0x00880912,  # TopicKeywords
    0x04000402,  # ReferencedDigitalSignatureSequence
    0x04000403,  # ReferencedSOPInstanceMACSequence
    0x04000404,  # MAC
    0x04000550,  # ModifiedAttributesSequence
    0x04000551,  # NonconformingModifiedAttributesSequence
    0x04000552,  # NonconformingDataElementValue
    0x04000561,  # OriginalAttributesSequence
    0x04000600,  # InstanceOriginStatus
    0x20300020,  # TextString
    0x30060004,  # StructureSetName
    0x30060006,  # StructureSetDescription
    0x30060028,  # ROIDescription
    0x30060038,  # ROIGenerationDescription
    0x30060085,  # ROIObservationLabel
    0x30060088,  # ROIObservationDescription
    0x300A0003,  # RTPlanName
    0x300A0004,  # RTPlanDescription
    0x300A000E,  # PrescriptionDescription
    0x300A0016,  # DoseReferenceDescription
    0x300A0072,  # FractionGroupDescription
    0x300A00B2,  # TreatmentMachineName
    0x300A00C3,  # BeamDescription
    0x300A00DD,  # BolusDescription
    0x300A0196,  # FixationDeviceDescription
    0x300A01A6,  # ShieldingDeviceDescription
    0x300A01B2,  # SetupTechniqueDescription
    0x300A0216,  # SourceManufacturer
    0x300A02EB,  # CompensatorDescription
    0x300A0676,  # EquipmentFrameOfReferenceDescription
    0x300C0113,  # ReasonForOmissionDescription
    0x30100036,  # EntityName
    0x30100037,  # EntityDescription
    0x30100061,  # PriorTreatmentDoseDescription
    0x40000010,  # Arbitrary
    0x40004000,  # TextComments
    0x40080042,  # ResultsIDIssuer
    0x40080102,  # InterpretationRecorder
    0x4008010A,  # InterpretationTranscriber
    0x4008010B,  # InterpretationText
    0x4008010C,  # InterpretationAuthor
    0x40080111,  # InterpretationApproverSequence
    0x40080114,  # PhysicianApprovingInterpretation
    0x40080115,  # InterpretationDiagnosisDescription
    0x40080118,  # ResultsDistributionListSequence
    0x40080119,  # DistributionName
    0x4008011A,  # DistributionAddress
    0x40080202,  # InterpretationIDIssuer
    0x40080300,  # Impressions
    0x40084000,  # ResultsComments
    0xFFFAFFFA,  # DigitalSignaturesSequence
    0xFFFCFFFC,  # DataSetTrailingPadding
)

_ZERO = (
    0x00080020,  # StudyDate
    0x00080030,  # StudyTime
    0x00080050,  # AccessionNumber
    0x00080090,  # ReferringPhysicianName
    0x0008009C,  # ConsultingPhysicianName
    0x00100010,  # PatientName
    0x00100020,  # PatientID
    0x00100030,  # PatientBirthDate
    0x00100040,  # PatientSex
    0x00120021,  # ClinicalTrialProtocolName
    0x00120030,  # ClinicalTrialSiteID
    0x00120031,  # ClinicalTrialSiteName
    0x00120050,  # ClinicalTrialTimePointID
    0x00120060,  # ClinicalTrialCoordinatingCenterName
    0x00200010,  # StudyID
    0x00400513,  # IssuerOfTheContainerIdentifierSequence
    0x00400562,  # IssuerOfTheSpecimenIdentifierSequence
    0x00400610,  # SpecimenPreparationSequence
    0x00402016,  # PlacerOrderNumberImagingServiceRequest
    0x00402017,  # FillerOrderNumberImagingServiceRequest
    0x0040A088,  # VerifyingObserverIdentificationCodeSequence
    0x300600A6,  # ROIInterpreter
    0x30060008,  # StructureSetDate
    0x30060026,  # ROIName
    0x300A0611,  # RTAccessoryHolderSlotID
    0x300A0615,  # RTAccessoryDeviceSlotID
    0x300A067D,  # RadiationGenerationModeDescription
    0x3010000F,  # ConceptualVolumeCombinationDescription
    0x30100017,  # ConceptualVolumeDescription
    0x3010001B,  # DeviceAlternateIdentifier
    0x30100043,  # ManufacturerDeviceIdentifier
    0x3010005A,  # RTPhysicianIntentNarrative
    0x3010005C,  # ReasonForSuperseding
    0x3010007A,  # TreatmentTechniqueNotes
    0x3010007B,  # PrescriptionNotes
    0x3010007F,  # FractionationNotes
    0x30100081,  # PrescriptionNotesSequence
)

_DUMMY = (
    0x00120010,  # ClinicalTrialSponsorName
    0x00120020,  # ClinicalTrialProtocolID
    0x00120040,  # ClinicalTrialSubjectID
    0x00120042,  # ClinicalTrialSubjectReadingID
    0x00120081,  # ClinicalTrialProtocolEthicsCommitteeName
    0x001811BB,  # AcquisitionFieldOfViewLabel
    0x0018936A,  # SourceEndDateTime
    0x00189367,  # XRaySourceID
    0x00189369,  # SourceStartDateTime
    0x00189371,  # XRayDetectorID
    0x00340001,  # FlowIdentifierSequence
    0x00340002,  # FlowIdentifier
    0x00340005,  # SourceIdentifier
    0x00340007,  # FrameOriginTimestamp
    0x003A0314,  # ImpedanceMeasurementDateTime
    0x00400512,  # ContainerIdentifier
    0x00400551,  # SpecimenIdentifier
    0x00401101,  # PersonIdentificationCodeSequence
    0x0040A027,  # VerifyingOrganization
    0x0040A073,  # VerifyingObserverSequence
    0x0040A075,  # VerifyingObserverName
    0x0040A123,  # PersonName
    0x0040A730,  # ContentSequence
    0x00700001,  # GraphicAnnotationSequence
    0x30060002,  # StructureSetLabel
    0x300A0002,  # RTPlanLabel
    0x300A0608,  # TreatmentPositionGroupLabel
    0x300A0619,  # RadiationDoseIdentificationLabel
    0x300A0623,  # RadiationDoseInVivoMeasurementLabel
    0x300A062A,  # RTToleranceSetLabel
    0x300A067C,  # RadiationGenerationModeLabel
    0x300A0734,  # TreatmentToleranceViolationDescription
    0x300A0736,  # TreatmentToleranceViolationDateTime
    0x300A073A,  # RecordedRTControlPointDateTime
    0x300A0741,  # InterlockDateTime
    0x300A0742,  # InterlockDescription
    0x300A0760,  # OverrideDateTime
    0x300A0783,  # InterlockOriginDescription
    0x3010002D,  # DeviceLabel
    0x30100033,  # UserContentLabel
    0x30100034,  # UserContentLongLabel
    0x30100035,  # EntityLabel
    0x30100038,  # EntityLongLabel
    0x30100054,  # RTPrescriptionLabel
    0x30100077,  # TreatmentSite
)

_NEW_UID = (
    0x00001001,  # RequestedSOPInstanceUID
    0x00020003,  # MediaStorageSOPInstanceUID
    0x00041511,  # ReferencedSOPInstanceUIDInFile
    0x00080014,  # InstanceCreatorUID
    0x00080018,  # SOPInstanceUID
    0x00080058,  # FailedSOPInstanceUIDList
    0x00081155,  # ReferencedSOPInstanceUID
    0x00081195,  # TransactionUID
    0x00083010,  # IrradiationEventUID
    0x00181002,  # DeviceUID
    0x0018100B,  # ManufacturerDeviceClassUID
    0x00182042,  # TargetUID
    0x0020000D,  # StudyInstanceUID
    0x0020000E,  # SeriesInstanceUID
    0x00200052,  # FrameOfReferenceUID
    0x00200200,  # SynchronizationFrameOfReferenceUID
    0x00209161,  # ConcatenationUID
    0x00209164,  # DimensionOrganizationUID
    0x00281199,  # PaletteColorLookupTableUID
    0x00281214,  # LargePaletteColorLookupTableUID
    0x003A0310,  # MultiplexGroupUID
    0x00400554,  # SpecimenUID
    0x00404023,  # ReferencedGeneralPurposeScheduledProcedureStepTransactionUID
    0x0040A124,  # UID
    0x0040A171,  # ObservationUID
    0x0040A172,  # ReferencedObservationUIDTrial
    0x0040A402,  # ObservationSubjectUIDTrial
    0x0040DB0C,  # TemplateExtensionOrganizationUID
    0x0040DB0D,  # TemplateExtensionCreatorUID
    0x00620021,  # TrackingUID
    0x0070031A,  # FiducialUID
    0x00701101,  # PresentationDisplayCollectionUID
    0x00701102,  # PresentationSequenceCollectionUID
    0x00880140,  # StorageMediaFileSetUID
    0x04000100,  # DigitalSignatureUID
    0x30060024,  # ReferencedFrameOfReferenceUID
    0x300600C2,  # RelatedFrameOfReferenceUID
    0x300A0013,  # DoseReferenceUID
    0x300A0083,  # ReferencedDoseReferenceUID
    0x300A0609,  # TreatmentPositionGroupUID
    0x300A0650,  # PatientSetupUID
    0x300A0700,  # TreatmentSessionUID
    0x30100006,  # ConceptualVolumeUID
    0x3010000B,  # ReferencedConceptualVolumeUID
    0x30100013,  # ConstituentConceptualVolumeUID
    0x30100015,  # SourceConceptualVolumeUID
    0x30100031,  # ReferencedFiducialsUID
    0x3010003B,  # RTTreatmentPhaseUID
    0x3010006E,  # DosimetricObjectiveUID
    0x3010006F,  # ReferencedDosimetricObjectiveUID
)

_CHOICES = {
    "X/Z": (
        0x00080022,  # AcquisitionDate
        0x00080032,  # AcquisitionTime
        0x00081110,  # ReferencedStudySequence
        0x00102203,  # PatientSexNeutered
        0x00321060,  # RequestedProcedureDescription
        0x00400555,  # AcquisitionContextSequence
        0x22000002,  # LabelText
        0x22000005,  # BarcodeValue
        0x30080105,  # SourceSerialNumber
        0x300E0008,  # ReviewerName
    ),
    "X/D": (
        0x00080021,  # SeriesDate
        0x00080031,  # SeriesTime
        0x00081072,  # OperatorIdentificationSequence
        0x00181030,  # ProtocolName
        0x00181400,  # AcquisitionDeviceProcessingDescription
        0x0018700A,  # DetectorID
        0x00189516,  # StartAcquisitionDateTime
        0x00189517,  # EndAcquisitionDateTime
        0x30060009,  # StructureSetTime
        0x30080054,  # FirstTreatmentDate
        0x30080056,  # MostRecentTreatmentDate
        0x30080250,  # TreatmentDate
        0x30080251,  # TreatmentTime
        0x300A0006,  # RTPlanDate
        0x300A0007,  # RTPlanTime
        0x3010004C,  # IntendedPhaseStartDate
        0x3010004D,  # IntendedPhaseEndDate
        0x30100056,  # RTTreatmentApproachLabel
    ),
    "Z/D": (
        0x00080023,  # ContentDate
        0x00080033,  # ContentTime
        0x00180010,  # ContrastBolusAgent
        0x00700084,  # ContentCreatorName
    ),
    "X/Z/D": (
        0x0008002A,  # AcquisitionDateTime
        0x00080080,  # InstitutionName
        0x00080082,  # InstitutionCodeSequence
        0x00081010,  # StationName
        0x00081070,  # OperatorsName
        0x00081111,  # ReferencedPerformedProcedureStepSequence
        0x00181000,  # DeviceSerialNumber
    ),
    "X/Z/U*": (
        0x00081140,  # ReferencedImageSequence
        0x00082112,  # SourceImageSequence
    ),
}


def _build_basic_profile() -> dict[int, str]:
    table: dict[int, str] = {}
    groups = [("X", _REMOVE), ("Z", _ZERO), ("D", _DUMMY), ("U", _NEW_UID)]
    groups += list(_CHOICES.items())
    for action, tags in groups:
        for tag in tags:
            if tag in table:  # a typo in the table above, caught at import
                raise RuntimeError(f"tag {tag:08X} listed twice in the Basic Profile table")
            table[tag] = action
    return table


#: PS3.15 Table E.1-1, Basic Profile column: tag (int) -> action code
#: (``'X'``, ``'Z'``, ``'D'``, ``'U'``, ``'X/Z'``, ``'X/D'``, ``'Z/D'``,
#: ``'X/Z/D'``, ``'X/Z/U*'``). Read-only.
BASIC_PROFILE: Mapping[int, str] = types.MappingProxyType(_build_basic_profile())

#: Attributes that oncomri also removes although Table E.1-1 does not list
#: them (they name a patient, a network node or a re-identification key).
EXTRA_ACTIONS: Mapping[int, str] = types.MappingProxyType({
    0x00020016: "X",  # SourceApplicationEntityTitle
    0x00020017: "X",  # SendingApplicationEntityTitle
    0x00020018: "X",  # ReceivingApplicationEntityTitle
    0x00020100: "X",  # PrivateInformationCreatorUID
    0x00020102: "X",  # PrivateInformation
    0x00080054: "X",  # RetrieveAETitle
    0x00080055: "X",  # StationAETitle
    0x00081190: "X",  # RetrieveURL
    0x0040E010: "X",  # RetrieveURI
    0x00100024: "X",  # IssuerOfPatientIDQualifiersSequence
    0x00100026: "X",  # SourcePatientGroupIdentificationSequence
    0x00100027: "X",  # GroupOfPatientsIdentificationSequence
    0x00100033: "X",  # PatientBirthDateInAlternativeCalendar
    0x00100034: "X",  # PatientDeathDateInAlternativeCalendar
    0x00100035: "X",  # PatientAlternativeCalendar
    0x04000500: "X",  # EncryptedAttributesSequence
})

# ----------------------------------------------------------------------- the options

#: Retain Patient Characteristics Option (E.3.4): attributes kept (``K``).
#: (Its ``C`` attributes -- Allergies, Patient State, Pre-Medication, Special
#: Needs -- stay removed: removal is the safest cleaning.)
_PATIENT_CHARACTERISTICS = frozenset({
    0x00100040,  # PatientSex
    0x00101010,  # PatientAge
    0x00101020,  # PatientSize
    0x00101030,  # PatientWeight
    0x00102160,  # EthnicGroup
    0x00102203,  # PatientSexNeutered
    0x001021A0,  # SmokingStatus
    0x001021C0,  # PregnancyStatus
})

#: Retain Device Identity Option (E.3.3): attributes kept (``K``).
_DEVICE_IDENTITY = frozenset({
    0x00081010, 0x00181000, 0x00181002, 0x00181004, 0x00181005, 0x00181007,
    0x00181008, 0x00181009, 0x0018100A, 0x0018100B, 0x00185011, 0x0018700A,
    0x00189367, 0x00189371, 0x00189373, 0x0016004E, 0x0016004F, 0x00160050,
    0x00160051, 0x00321020, 0x00321021, 0x00400001, 0x00400010, 0x00400011,
    0x00400241, 0x00400242, 0x00404025, 0x00404027, 0x00404028, 0x00404030,
    0x00500020, 0x30080105, 0x300A00B2, 0x300A0216, 0x3010002D, 0x30100043,
})

#: Retain Institution Identity Option (E.3.3a): attributes kept (``K``).
_INSTITUTION_IDENTITY = frozenset({
    0x00080080, 0x00080081, 0x00080082, 0x00081040, 0x00081041,
    0x00120030, 0x00120031, 0x00120060, 0x00120081,
})

#: Clean Descriptors Option (E.3.11), restricted to descriptors of the
#: acquisition, series, study and derived objects; patient-level free text
#: (comments, history, diagnoses, reasons) stays removed.
_DESCRIPTORS = frozenset({
    0x0008103E,  # SeriesDescription
    0x00081030,  # StudyDescription
    0x00082111,  # DerivationDescription
    0x00120051,  # ClinicalTrialTimePointDescription
    0x00120072,  # ClinicalTrialSeriesDescription
    0x0016004B,  # DeviceSettingDescription
    0x00180010,  # ContrastBolusAgent
    0x001811BB,  # AcquisitionFieldOfViewLabel
    0x00181030,  # ProtocolName
    0x00181400,  # AcquisitionDeviceProcessingDescription
    0x00189185,  # RespiratoryMotionCompensationTechniqueDescription
    0x0018937B,  # MultienergyAcquisitionDescription
    0x0018937F,  # DecompositionDescription
    0x00189424,  # AcquisitionProtocolDescription
    0x00189937,  # RequestedSeriesDescription
    0x0018A003,  # ContributionDescription
    0x00321060,  # RequestedProcedureDescription
    0x00400007,  # ScheduledProcedureStepDescription
    0x00400254,  # PerformedProcedureStepDescription
    0x30060002,  # StructureSetLabel
    0x30060004,  # StructureSetName
    0x30060006,  # StructureSetDescription
    0x30060026,  # ROIName
    0x30060028,  # ROIDescription
    0x30060038,  # ROIGenerationDescription
    0x30060085,  # ROIObservationLabel
    0x30060088,  # ROIObservationDescription
})

#: Clean Structured Content Option (E.3.10): sequences cleaned, not replaced.
_STRUCTURED_CONTENT = frozenset({
    0x0040A730,  # ContentSequence
    0x00400555,  # AcquisitionContextSequence
    0x00400610,  # SpecimenPreparationSequence
})

# Code sequences whose code itself names a person or an institution: a ``D``
# replaces their item by one dummy code.
_IDENTIFYING_CODE_SEQUENCES = frozenset({0x00401101, 0x00080082})

_PATIENT_NAME = 0x00100010
_PATIENT_ID = 0x00100020
_PATIENT_BIRTH_DATE = 0x00100030
_PATIENT_BIRTH_TIME = 0x00100032
_TIMEZONE_OFFSET = 0x00080201
_CLINICAL_TRIAL_SUBJECT_ID = 0x00120040

# UI attributes that name a class, syntax or scheme, not an instance: kept
# (besides every keyword with "SOPClass" or "TransferSyntax" in it).
_CLASS_UID_KEYWORDS = frozenset({
    "ImplementationClassUID", "CodingSchemeUID", "ContextUID", "MappingResourceUID",
    "SOPClassesInStudy", "SOPClassesSupported",
})

# Attributes of the Code Sequence Macro (PS3.3 Table 8.8-1): coded concepts
# from terminologies, kept inside reference (``U*``) sequences.
_CODE_KEYWORDS = frozenset({
    "CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning",
    "LongCodeValue", "URNCodeValue", "MappingResource", "MappingResourceName",
    "ContextIdentifier", "ContextGroupVersion", "ContextGroupLocalVersion",
})

_TEXT_VRS = frozenset({"LO", "SH", "LT", "ST", "UT", "UC", "PN"})
_FREE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UC", "PN"})
_TEMPORAL_VRS = frozenset({"DA", "DT", "TM"})

# Attributes whose values name the patient or people around them; their
# values are searched for and removed from any text that is kept. (Names of
# institutions and devices are not: they coincide with manufacturer names.)
_IDENTIFIER_SOURCES = frozenset({
    0x00100010, 0x00100020, 0x00101000, 0x00101001, 0x00101005, 0x00101060,
    0x00100030, 0x00080050, 0x00101090, 0x00101040, 0x00102154, 0x00380010,
    0x00380060, 0x00120040, 0x00120042, 0x00080090, 0x0008009C, 0x00081048,
    0x00081050, 0x00081060, 0x00081070, 0x00321032, 0x00404037, 0x0040A075,
    0x00700084,
})

# Modes of the recursion into a sequence, weakest first.
_KEEP, _REFS, _DUMMIES = 0, 1, 2

_TYPE_RANK = {"1": 0, "1C": 1, "2": 2, "2C": 3, "3": 4}

# ------------------------------------------------------------------ IOD types


@lru_cache(maxsize=64)
def _iod_types(sop_class_uid: str):
    """``{(path, keyword): type}`` of the IOD of ``sop_class_uid``, or None.

    ``path`` is the tuple of enclosing sequence keywords. Built from the
    module tables that highdicom ships (generated from PS3.3); the strictest
    Type over all the IOD's modules wins. None when the SOP Class is unknown
    or the tables cannot be loaded.
    """
    try:
        from highdicom._standard_utils import (
            get_iod_module_map,
            get_module_attribute_map,
            get_sop_class_iod_map,
        )

        iod = get_sop_class_iod_map().get(sop_class_uid)
        if iod is None:
            return None
        modules = get_iod_module_map()[iod]
        attributes = get_module_attribute_map()
    except Exception:  # a missing or changed private table: fall back
        return None
    types_: dict[tuple, str] = {}
    for module in modules:
        for entry in attributes.get(module["key"], ()):
            key = (tuple(entry["path"]), entry["keyword"])
            new = entry["type"]
            old = types_.get(key)
            if old is None or _TYPE_RANK.get(new, 9) < _TYPE_RANK.get(old, 9):
                types_[key] = new
    return types_


# --------------------------------------------------------------------- helpers


def _hmac(key: bytes, domain: str, value: str) -> bytes:
    return hmac.new(key, domain.encode() + b"\x00" + value.encode("utf-8"),
                    hashlib.sha256).digest()


def _text(value) -> str:
    """The DICOM string form of a value (pydicom DA/DT/TM objects included)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    original = getattr(value, "original_string", None)  # DA/DT/TM objects
    if isinstance(original, str):
        return original
    return str(value)


_DATE_RE = re.compile(r"^(<?)(\d{4})([-./]?)(\d{2})\3(\d{2})(.*)$", re.DOTALL)


def _shift_date_text(text: str, delta: _dt.timedelta) -> str | None:
    """``text`` with its leading date moved by ``delta``; None if it has none.

    Accepts DICOM DA/DT (``YYYYMMDD...``), ISO 8601 (``YYYY-MM-DD...``), the
    ACR-NEMA/PAR form ``YYYY.MM.DD...`` and ``YYYY/MM/DD...``, optionally in
    ParaVision's angle brackets; separators and everything after the date
    (time, fraction, UTC offset) are kept as they are.
    """
    m = _DATE_RE.match(text.strip())
    if m is None:
        return None
    bracket, year, sep, month, day, rest = m.groups()
    try:
        moved = _dt.date(int(year), int(month), int(day)) + delta
    except (ValueError, OverflowError):
        return None
    return f"{bracket}{moved.year:04d}{sep}{moved.month:02d}{sep}{moved.day:02d}{rest}"


def _name_parts(value) -> list[str]:
    return [p for p in re.split(r"[\^=\s,]+", _text(value)) if p]


class _Identifiers:
    """Known identifying strings, searched for in text that is kept."""

    def __init__(self):
        self._parts: set[str] = set()

    def add(self, value, *, split=False):
        texts = _name_parts(value) if split else [_text(value).strip()]
        for t in texts:
            if len(t) >= 2 and not t.isspace() and t.upper() != DUMMY:
                self._parts.add(t)

    def add_date(self, value):
        t = _text(value).strip()
        if re.fullmatch(r"\d{8}", t):
            self._parts.update({t, f"{t[:4]}-{t[4:6]}-{t[6:]}", f"{t[:4]}.{t[4:6]}.{t[6:]}"})

    def pattern(self):
        if not self._parts:
            return None
        alternatives = []
        for p in sorted(self._parts, key=len, reverse=True):
            esc = re.escape(p)
            # long tokens anywhere; short ones only as whole words
            alternatives.append(esc if len(p) >= 5 else rf"(?<![A-Za-z0-9]){esc}(?![A-Za-z0-9])")
        return re.compile("|".join(alternatives), re.IGNORECASE)


def _scrub(text: str, pattern) -> str:
    """``text`` without the identifiers matched by ``pattern`` (a dummy if nothing is left)."""
    if pattern is None or not text:
        return text
    cleaned = pattern.sub("", text)
    if cleaned == text:
        return text
    cleaned = re.sub(r"\s{2,}", " ", cleaned).strip(" _-^,;:")
    return cleaned or DUMMY


# ------------------------------------------------------------------ the class


class Deidentifier:
    """De-identify DICOM datasets and sidecar metadata (DICOM PS3.15 Annex E).

    The same secret maps the same input to the same output in every run and
    process (keyed HMAC-SHA256), so objects de-identified separately --
    a source series today, the Parametric Map computed from it next week --
    still refer to each other, and all sessions of a subject share one
    pseudonym and one date shift. Keep the secret secret: whoever has it can
    re-link pseudonyms to patient IDs by trying candidate IDs.

    Parameters
    ----------
    secret : bytes or str
        At least 16 bytes (e.g. ``secrets.token_hex(32)``).
    date_shift_days : callable, optional
        ``date_shift_days(patient_id) -> int``: the number of days added to
        every date of that subject (negative moves dates back). Default:
        derived from HMAC-SHA256(secret, patient_id), in [-365, -1]. A
        function returning 0 retains full dates (then the Retain
        Longitudinal Temporal Information Full Dates Option is declared).
    keep_descriptors : bool
        Keep series, study, protocol and derivation descriptions (Series
        Description, Protocol Name, Study Description, Derivation
        Description, Contrast/Bolus Agent, ROI names ...) after removing
        from them every identifier found in the dataset -- the Clean
        Descriptors Option (PS3.15 E.3.11). Patient-level free text (comments,
        history, diagnoses) is removed regardless.
    keep_patient_characteristics : bool
        Keep Patient's Sex, Age, Size, Weight, Sex Neutered, Ethnic Group,
        Smoking and Pregnancy Status -- the Retain Patient Characteristics
        Option (E.3.4).
    keep_device_identity : bool
        Keep Station Name, Device Serial Number, Device UID and the other
        device identifiers -- the Retain Device Identity Option (E.3.3).
    keep_institution_identity : bool
        Keep Institution Name, Address, Department and the clinical trial
        site -- the Retain Institution Identity Option (E.3.3a).
    clean_structured_content : bool
        Keep the Content Sequence of SR documents (and Acquisition Context,
        Specimen Preparation) with its codes and numbers, cleaning text,
        names, dates and UIDs in it, instead of replacing its text by dummies
        -- the Clean Structured Content Option (E.3.10). Use it for SR
        content that oncomri wrote itself.
    allow_burned_in_annotation : bool
        De-identify a dataset with Burned In Annotation (0028,0301) = YES
        anyway (its pixels are not cleaned). Default: refuse it.

    Raises
    ------
    ValidationError
        If ``secret`` is not bytes/str or shorter than 16 bytes, or
        ``date_shift_days`` is not callable.

    Examples
    --------
    >>> deid = Deidentifier(secrets.token_hex(32))           # doctest: +SKIP
    >>> clean = deid.deidentify_dataset(pydicom.dcmread(path))  # doctest: +SKIP
    >>> sidecar = deid.deidentify_metadata(volume.meta, subject_id="12345")  # doctest: +SKIP
    """

    def __init__(self, secret, *, date_shift_days: Callable | None = None,
                 keep_descriptors: bool = False, keep_patient_characteristics: bool = False,
                 keep_device_identity: bool = False, keep_institution_identity: bool = False,
                 clean_structured_content: bool = False,
                 allow_burned_in_annotation: bool = False):
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if not isinstance(secret, (bytes, bytearray)):
            raise ValidationError(
                f"secret: expected bytes or str, got {type(secret).__name__}; "
                "pass e.g. secrets.token_hex(32)")
        if len(secret) < 16:
            raise ValidationError(
                f"secret: {len(secret)} bytes is too short to protect pseudonyms; "
                "use at least 16 bytes, e.g. secrets.token_hex(32)")
        if date_shift_days is not None and not callable(date_shift_days):
            raise ValidationError(
                f"date_shift_days: expected a function patient_id -> int days, "
                f"got {type(date_shift_days).__name__}")
        self._key = bytes(secret)
        self._uid_cache: dict[str, str] = {}
        self._date_shift_days = date_shift_days
        self.keep_descriptors = bool(keep_descriptors)
        self.keep_patient_characteristics = bool(keep_patient_characteristics)
        self.keep_device_identity = bool(keep_device_identity)
        self.keep_institution_identity = bool(keep_institution_identity)
        self.clean_structured_content = bool(clean_structured_content)
        self.allow_burned_in_annotation = bool(allow_burned_in_annotation)
        kept = set()
        if self.keep_patient_characteristics:
            kept |= _PATIENT_CHARACTERISTICS
        if self.keep_device_identity:
            kept |= _DEVICE_IDENTITY
        if self.keep_institution_identity:
            kept |= _INSTITUTION_IDENTITY
        self._kept = frozenset(kept)

    def __repr__(self):
        opts = [name for name in ("keep_descriptors", "keep_patient_characteristics",
                                  "keep_device_identity", "keep_institution_identity",
                                  "clean_structured_content") if getattr(self, name)]
        return f"Deidentifier(secret=<hidden>{''.join(', ' + o + '=True' for o in opts)})"

    # ----------------------------------------------------------- primitives

    @staticmethod
    def _check_id(value, what: str) -> str:
        if not isinstance(value, str):
            raise ValidationError(f"{what}: expected a str, got {type(value).__name__}")
        value = value.strip().strip("\x00")
        if not value:
            raise ValidationError(
                f"{what}: is empty; pass the subject's original identifier "
                "(Patient ID) or choose the subject label yourself")
        return value

    def pseudonym(self, patient_id: str) -> str:
        """The pseudonym of a patient: ``'sub-'`` + 8 hex digits.

        Parameters
        ----------
        patient_id : str
            The original Patient ID (0010,0020) (surrounding spaces ignored).

        Returns
        -------
        str
            E.g. ``'sub-3fa2c91b'``: the first 32 bits of
            HMAC-SHA256(secret, patient_id). Usable as a BIDS subject label
            (without ``'sub-'``) and as a DICOM Patient ID / Patient's Name.

        Raises
        ------
        ValidationError
            If ``patient_id`` is not a str or is empty.
        """
        pid = self._check_id(patient_id, "patient_id")
        return "sub-" + _hmac(self._key, "subject", pid).hex()[:8]

    def date_shift(self, patient_id: str) -> _dt.timedelta:
        """The shift applied to every date of a patient.

        Parameters
        ----------
        patient_id : str
            The original Patient ID.

        Returns
        -------
        datetime.timedelta
            Whole days: ``date_shift_days(patient_id)`` if given, else
            ``-(1 + h mod 365)`` days with ``h`` from
            HMAC-SHA256(secret, patient_id), i.e. in [-365, -1].

        Raises
        ------
        ValidationError
            If ``patient_id`` is empty or ``date_shift_days`` returns a
            non-integer.
        """
        pid = self._check_id(patient_id, "patient_id")
        if self._date_shift_days is not None:
            days = self._date_shift_days(pid)
            if isinstance(days, _dt.timedelta):
                if days % _dt.timedelta(days=1):
                    raise ValidationError(
                        f"date_shift_days returned {days}, not whole days; return an int")
                return days
            try:
                whole = not isinstance(days, bool) and float(days).is_integer()
            except (TypeError, ValueError):
                whole = False
            if not whole:
                raise ValidationError(
                    f"date_shift_days returned {days!r}; return an int number of days")
            return _dt.timedelta(days=int(days))
        h = int.from_bytes(_hmac(self._key, "dateshift", pid)[:8], "big")
        return _dt.timedelta(days=-(1 + h % 365))

    def uid(self, original_uid: str) -> str:
        """The replacement of a UID: ``'2.25.'`` + a 128-bit integer.

        Parameters
        ----------
        original_uid : str
            Any UID (surrounding spaces and NUL padding ignored).

        Returns
        -------
        str
            A UUID-derived UID (PS3.5 B.2; RFC 9562 version 8 UUID built from
            HMAC-SHA256(secret, original_uid)), at most 44 characters.

        Raises
        ------
        ValidationError
            If ``original_uid`` is not a str or is empty.
        """
        value = self._check_id(original_uid, "original_uid")
        cached = self._uid_cache.get(value)
        if cached is not None:
            return cached
        n = int.from_bytes(_hmac(self._key, "uid", value)[:16], "big")
        n = (n & ~(0xF << 76)) | (0x8 << 76)  # version 8 (custom)
        n = (n & ~(0x3 << 62)) | (0x2 << 62)  # RFC 9562 variant
        if len(self._uid_cache) > 200_000:
            self._uid_cache.clear()
        self._uid_cache[value] = new = f"2.25.{n}"
        return new

    # --------------------------------------------------------- descriptions

    def _method_codes(self, shift_days: int | None):
        from pydicom.sr.codedict import codes

        dcm = codes.DCM
        out = [dcm.BasicApplicationConfidentialityProfile]
        if shift_days is not None:
            out.append(dcm.RetainLongitudinalTemporalInformationModifiedDatesOption
                       if shift_days else
                       dcm.RetainLongitudinalTemporalInformationFullDatesOption)
        if self.keep_patient_characteristics:
            out.append(dcm.RetainPatientCharacteristicsOption)
        if self.keep_device_identity:
            out.append(dcm.RetainDeviceIdentityOption)
        if self.keep_institution_identity:
            out.append(dcm.RetainInstitutionIdentityOption)
        if self.keep_descriptors:
            out.append(dcm.CleanDescriptorsOption)
        if self.clean_structured_content:
            out.append(dcm.CleanStructuredContentOption)
        return out

    def _method_text(self, shift_days: int | None) -> list[str]:
        from .. import __version__

        return [f"oncomri {__version__} PS3.15 E"[:64]] + [
            c.meaning[:64] for c in self._method_codes(shift_days)]

    # ------------------------------------------------------------ datasets

    def deidentify_dataset(self, ds, *, subject_id: str | None = None):
        """A de-identified copy of a DICOM dataset (PS3.15 E.1 Basic Profile).

        Parameters
        ----------
        ds : pydicom.Dataset
            Any composite instance (image, Parametric Map, SEG, SR ...), with
            or without ``file_meta``. Not modified.
        subject_id : str, optional
            The subject's original identifier, used for the pseudonym and the
            date shift in place of the dataset's Patient ID (e.g. for
            datasets without one). Default: Patient ID, else Patient's Name.

        Returns
        -------
        pydicom.Dataset
            A new dataset (pixel data shared, not copied) with the actions
            described in this module's docstring applied, including
            Patient Identity Removed = YES and the De-identification Method
            (Code Sequence); its ``file_meta`` (if any) has the new Media
            Storage SOP Instance UID.

        Raises
        ------
        ValidationError
            If ``ds`` is not a pydicom Dataset, has no Patient ID, Patient's
            Name or ``subject_id``, declares burned-in annotation (see
            ``allow_burned_in_annotation``), or holds an element that cannot
            be decoded.
        """
        import pydicom

        if not isinstance(ds, pydicom.Dataset):
            raise ValidationError(
                f"ds: expected a pydicom Dataset, got {type(ds).__name__}; "
                "read the file with pydicom.dcmread first")
        key = self._subject_key(ds, subject_id)
        if not self.allow_burned_in_annotation:
            burned = _text(ds.get("BurnedInAnnotation", "")).strip().upper()
            if burned == "YES":
                raise ValidationError(
                    f"dataset {_text(ds.get('SOPInstanceUID', '?'))}: Burned In Annotation "
                    "is YES, so its pixels may show the patient's identity; clean the pixel "
                    "data first, or pass allow_burned_in_annotation=True if they are clean")
        ctx = _Context(
            deid=self, key=key, pseudonym=self.pseudonym(key), shift=self.date_shift(key),
            types=_iod_types(_text(ds.get("SOPClassUID", "")).strip()),
            pattern=self._identifier_pattern(ds, key),
        )
        out = self._dataset(ds, ctx, path=(), mode=_KEEP, top=True)
        self._stamp(out, ctx)
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            out.file_meta = self._file_meta(meta, ctx, out)
        if hasattr(ds, "original_encoding"):
            try:
                out.set_original_encoding(*ds.original_encoding, ds.original_character_set)
            except Exception:  # encoding of a dataset built in memory: unknown
                pass
        return out

    def _subject_key(self, ds, subject_id) -> str:
        if subject_id is not None:
            return self._check_id(subject_id, "subject_id")
        for keyword in ("PatientID", "PatientName"):
            value = _text(ds.get(keyword, "")).strip().strip("\x00")
            if value:
                return value
        raise ValidationError(
            f"dataset {_text(ds.get('SOPInstanceUID', '?'))}: has no Patient ID or Patient's "
            "Name to derive the pseudonym and date shift from; pass subject_id=...")

    def _identifier_pattern(self, ds, key):
        found = _Identifiers()
        found.add(key)
        for tag in sorted(_IDENTIFIER_SOURCES):
            if tag not in ds:
                continue
            value = ds[tag].value
            if tag == _PATIENT_BIRTH_DATE:
                found.add_date(value)
                continue
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                found.add(v)
                if ds[tag].VR == "PN":
                    found.add(v, split=True)
        return found.pattern()

    def _stamp(self, out, ctx):
        from pydicom import Dataset, Sequence

        shift_days = ctx.shift.days
        if _PATIENT_NAME in out or _PATIENT_ID in out:
            out.PatientName = ctx.pseudonym
            out.PatientID = ctx.pseudonym
        out.PatientIdentityRemoved = "YES"
        out.DeidentificationMethod = self._method_text(shift_days)
        items = []
        for code in self._method_codes(shift_days):
            item = Dataset()
            item.CodeValue = code.value
            item.CodingSchemeDesignator = code.scheme_designator
            item.CodeMeaning = code.meaning
            items.append(item)
        out.DeidentificationMethodCodeSequence = Sequence(items)
        out.LongitudinalTemporalInformationModified = "MODIFIED" if shift_days else "UNMODIFIED"

    def _file_meta(self, meta, ctx, out):
        from pydicom.dataset import FileMetaDataset

        new = FileMetaDataset()
        for elem in meta:
            tag = int(elem.tag)
            if elem.tag.is_private or EXTRA_ACTIONS.get(tag) == "X" or elem.tag.element == 0:
                continue
            if tag == 0x00020003:
                value = _text(out.get("SOPInstanceUID", "")) or self._uid_value(elem.value)
                new.add_new(elem.tag, elem.VR, value)
            else:
                new.add_new(elem.tag, elem.VR, copy.copy(elem.value))
        return new

    def _uid_value(self, value):
        if isinstance(value, (list, tuple)):
            return [self._uid_value(v) for v in value]
        text = _text(value).strip().strip("\x00")
        if not text or text.startswith(_DICOM_UID_ROOT):
            return text
        return self.uid(text)

    # ------------------------------------------------------------ recursion

    def _action(self, tag: int, vr: str, keyword: str, ctx, mode: int) -> str:
        """The action for one element: X Z D U U* K C T (temporal) P (pseudonym)."""
        if tag in self._kept:
            return "K"
        if tag in _DESCRIPTORS and self.keep_descriptors:
            return "C"
        if tag in _STRUCTURED_CONTENT and self.clean_structured_content:
            return "C"
        if tag in (_PATIENT_ID, _CLINICAL_TRIAL_SUBJECT_ID):
            return "P"
        if tag in (_PATIENT_BIRTH_DATE, _PATIENT_BIRTH_TIME):
            return BASIC_PROFILE[tag]
        if vr in _TEMPORAL_VRS:
            return "T"  # Modified Dates Option: dates shifted, times kept
        if tag == _TIMEZONE_OFFSET:
            return "TZ"  # ``C`` in the Modified Dates Option column: kept if an offset
        action = BASIC_PROFILE.get(tag) or EXTRA_ACTIONS.get(tag)
        if action is not None:
            return action
        # not in the table: the safety net
        if vr == "PN":
            return "X/Z/D"
        if vr == "UI":
            is_class = (keyword in _CLASS_UID_KEYWORDS or "SOPClass" in keyword
                        or "TransferSyntax" in keyword)
            return "K" if is_class else "U"
        if vr in ("UR", "AE"):
            return "X/Z/D" if vr == "AE" else "X"
        if vr == "UN":
            return "X"
        if mode == _DUMMIES and vr in _TEXT_VRS:
            return "D"
        if mode == _REFS and vr in _FREE_TEXT_VRS:
            return "D"
        return "C" if vr in _TEXT_VRS else "K"

    def _choose(self, action: str, path, keyword, ctx) -> str:
        """One action out of ``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D`` by the attribute's Type."""
        options = action.split("/")
        if "U*" in options:
            return "U*"
        if ctx.types is None:  # IOD unknown: keep something where allowed
            kind = "1"
        else:
            kind = ctx.types.get((path, keyword))
        if kind in ("1", "1C"):
            order = ("D", "Z", "X")
        elif kind in ("2", "2C"):
            order = ("Z", "D", "X")
        else:
            order = ("X",)
        for choice in order:
            if choice in options:
                return choice
        return options[0]

    def _dataset(self, ds, ctx, *, path: tuple, mode: int, top: bool = False):
        from pydicom import Dataset

        out = Dataset()
        for tag in list(ds.keys()):
            if tag.is_private:
                continue
            group, element = tag.group, tag.element
            repeating = 0x5000 <= group <= 0x501E or 0x6000 <= group <= 0x601E
            if element == 0 or (repeating and not group & 1):
                continue  # group lengths, curves (50xx), overlays (60xx)
            try:
                elem = ds[tag]
            except Exception as exc:
                raise ValidationError(
                    f"element {tag}: cannot be decoded ({exc}); repair or remove it "
                    "before de-identification") from None
            new = self._element(elem, ctx, path=path, mode=mode, top=top)
            if new is not None:
                out.add(new)
        return out

    def _element(self, elem, ctx, *, path, mode, top):
        from pydicom import DataElement

        tag = int(elem.tag)
        vr = elem.VR
        keyword = elem.keyword
        action = self._action(tag, vr, keyword, ctx, mode)
        if "/" in action:
            action = self._choose(action, path, keyword, ctx)
        value = elem.value

        if action == "X":
            return None
        if vr == "SQ":
            return self._sequence(elem, action, ctx, path=path, mode=mode)
        if action == "P":
            if tag == _PATIENT_ID and top:
                return DataElement(tag, vr, ctx.pseudonym)
            text = _text(value).strip()
            if tag == _CLINICAL_TRIAL_SUBJECT_ID:
                return DataElement(tag, vr, ctx.pseudonym)
            return DataElement(tag, vr, self.pseudonym(text) if text else "")
        if action == "Z":
            if tag == _PATIENT_NAME and top:
                return DataElement(tag, vr, ctx.pseudonym)
            return DataElement(tag, vr, None)
        if action == "D":
            return DataElement(tag, vr, self._dummy(vr, value))
        if action == "U":
            return DataElement(tag, vr, self._uid_value(value))
        if action == "T":
            return self._temporal(elem, ctx, path)
        if action == "TZ":
            ok = re.fullmatch(r"[+-]\d{4}", _text(value).strip())
            return DataElement(tag, vr, _text(value).strip()) if ok else None
        if vr in _TEXT_VRS and vr != "PN" and keyword not in _CODE_KEYWORDS:
            # C, and K on text: remove the identifiers known from this dataset
            return DataElement(tag, vr, self._clean_value(value, ctx))
        if isinstance(value, list):
            value = list(value)
        return DataElement(tag, vr, value)

    def _sequence(self, elem, action, ctx, *, path, mode):
        from pydicom import DataElement, Dataset, Sequence

        tag = int(elem.tag)
        if action == "Z":
            return DataElement(tag, "SQ", Sequence())
        if action == "D" and tag in _IDENTIFYING_CODE_SEQUENCES:
            item = Dataset()
            item.CodeValue = DUMMY
            item.CodingSchemeDesignator = _DUMMY_SCHEME
            item.CodeMeaning = DUMMY
            return DataElement(tag, "SQ", Sequence([item]))
        if action == "D":
            mode = max(mode, _DUMMIES)
        elif action == "U*":
            mode = max(mode, _REFS)
        elif action == "C":
            mode = _KEEP if tag in _STRUCTURED_CONTENT else mode
        inner = path + (elem.keyword,)
        items = [self._dataset(item, ctx, path=inner, mode=mode) for item in (elem.value or ())]
        return DataElement(tag, "SQ", Sequence(items))

    def _temporal(self, elem, ctx, path):
        from pydicom import DataElement

        vr = elem.VR
        value = elem.value
        if vr == "TM":
            return DataElement(elem.tag, vr, copy.copy(value))
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        shifted = []
        for v in values:
            text = _text(v).strip()
            if not text:
                shifted.append("")
                continue
            new = _shift_date_text(text, ctx.shift)
            if new is None or (vr == "DA" and len(new) != len(text)):
                # not a date we can move: fall back to the table's choice
                choice = self._choose("X/Z/D", path, elem.keyword, ctx)
                if choice == "X":
                    return None
                if choice == "Z":
                    return DataElement(elem.tag, vr, None)
                new = "19000101"
            shifted.append(new)
        return DataElement(elem.tag, vr, shifted if len(shifted) > 1 else shifted[0])

    @staticmethod
    def _dummy(vr: str, value):
        if vr in ("DS", "IS"):
            return "0"
        if vr in ("US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"):
            return value  # numbers are not identifying; a dummy must be non-empty
        if vr in ("OB", "OW", "OD", "OF", "OL", "OV"):
            return b"\x00\x00"
        if vr == "DA":
            return "19000101"
        if vr == "DT":
            return "19000101000000"
        if vr == "TM":
            return "000000"
        if vr == "CS":
            return DUMMY
        return DUMMY

    def _clean_value(self, value, ctx):
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            return [self._clean_value(v, ctx) for v in value]
        if isinstance(value, (bytes, bytearray)):
            return value
        text = _text(value)
        cleaned = _scrub(text, ctx.pattern)
        return value if cleaned == text else cleaned

    # ------------------------------------------------------------ metadata

    def deidentify_metadata(self, meta: Mapping, *, subject_id: str | None = None) -> dict:
        """A de-identified copy of a sidecar / ``Volume.meta`` dictionary.

        Keys that are DICOM keywords (as dcm2niix and oncomri's readers
        write them) get the action of :data:`BASIC_PROFILE` (and of the
        chosen options); with no IOD to satisfy, every choice of ``X``, ``Z``
        or ``D`` becomes removal. Patient's Name and Patient ID become the
        pseudonym, UIDs are replaced as in :meth:`deidentify_dataset`, dates
        (``YYYYMMDD``, ``YYYY-MM-DD``, ``YYYY.MM.DD`` ... with any time part
        kept) move by the same per-subject shift, times stay. Other keys are
        judged by the words of their name: keys about the patient or
        subject (except positions/orientations), people, institutions,
        addresses, telephones, birth, accession, serial numbers, stations and
        comments are removed; keys with ``Date`` are shifted (removed if not
        a date); keys with ``UID`` replaced. Every other text value is
        cleaned of the identifiers found in the dictionary and of
        ``subject_id``. Nested dicts and lists are processed the same way;
        pydicom datasets in it go through :meth:`deidentify_dataset`.

        Parameters
        ----------
        meta : mapping
            E.g. a dcm2niix JSON sidecar or ``Volume.meta``. Not modified.
        subject_id : str, optional
            The subject's original identifier (its Patient ID). Default:
            ``meta['PatientID']``, else ``meta['PatientName']``. Without any
            of them no pseudonym can be derived and dates are removed instead
            of shifted.

        Returns
        -------
        dict
            The cleaned copy, with ``PatientIdentityRemoved: 'YES'`` and
            ``DeidentificationMethod`` (list of str) added.

        Raises
        ------
        ValidationError
            If ``meta`` is not a mapping.
        """
        if not isinstance(meta, Mapping):
            raise ValidationError(
                f"meta: expected a dict of sidecar fields, got {type(meta).__name__}")
        key = None
        if subject_id is not None:
            key = self._check_id(subject_id, "subject_id")
        else:
            for name in ("PatientID", "PatientName"):
                text = _text(meta.get(name, "")).strip() if isinstance(
                    meta.get(name, ""), str) else ""
                if text:
                    key = text
                    break
        found = _Identifiers()
        if key:
            found.add(key)
        self._collect_meta(meta, found)
        ctx = _Context(deid=self, key=key, pseudonym=self.pseudonym(key) if key else None,
                       shift=self.date_shift(key) if key else None, types=None,
                       pattern=found.pattern())
        out = self._meta_dict(meta, ctx)
        out["PatientIdentityRemoved"] = "YES"
        out["DeidentificationMethod"] = self._method_text(
            ctx.shift.days if ctx.shift is not None else None)
        return out

    def _collect_meta(self, meta, found):
        from pydicom.datadict import dictionary_VR, tag_for_keyword

        for k, v in meta.items():
            if isinstance(v, Mapping):
                self._collect_meta(v, found)
                continue
            tag = tag_for_keyword(k) if isinstance(k, str) else None
            if tag is None and isinstance(k, str):
                words = _words(k)
                if words & {"patient", "subject"} and words & {"name", "id", "identifier"}:
                    for x in (v if isinstance(v, list) else [v]):
                        if isinstance(x, str):
                            found.add(x)
                            found.add(x, split=True)
                continue
            if tag is None or tag not in _IDENTIFIER_SOURCES:
                continue
            is_pn = dictionary_VR(tag) == "PN"
            for x in (v if isinstance(v, list) else [v]):
                if not isinstance(x, str):
                    continue
                if tag == _PATIENT_BIRTH_DATE:
                    found.add_date(x.replace("-", "").replace(".", ""))
                else:
                    found.add(x)
                    if is_pn:
                        found.add(x, split=True)

    def _meta_dict(self, meta, ctx) -> dict:
        out = {}
        for k, v in meta.items():
            keep, value = self._meta_item(k, v, ctx)
            if keep:
                out[k] = value
        return out

    def _meta_action(self, key) -> str:
        from pydicom.datadict import dictionary_VR, tag_for_keyword

        if not isinstance(key, str):
            return "C"
        tag = tag_for_keyword(_META_ALIASES.get(key, key))
        if tag is not None:
            vr = dictionary_VR(tag)
            if tag in (_PATIENT_NAME, _PATIENT_ID):
                return "P"
            action = self._action(tag, vr, key, None, _KEEP)
            if action in ("T", "K", "C", "U", "P"):
                return action
            if action == "TZ":
                return "K"
            if action in ("U*",):
                return "C"
            return "X"  # X, Z, D and their choices: nothing to conform to
        words = _words(key)
        if words & {"birth", "birthday", "dob", "death"}:
            return "X"  # birth dates are emptied (Z), never shifted
        if words & _META_DATE_WORDS:
            return "T"
        if "uid" in words or "uids" in words or key.lower().endswith("uid") or key.lower().endswith("uids"):
            return "U"
        if words & _META_PHI_WORDS and not words & _META_SAFE_WORDS:
            return "X"
        return "C"

    def _meta_item(self, key, value, ctx):
        import numpy as np
        import pydicom

        if isinstance(value, pydicom.Dataset):
            return True, self.deidentify_dataset(value, subject_id=ctx.key)
        if isinstance(value, Mapping):
            return True, self._meta_dict(value, ctx)
        action = self._meta_action(key)
        if action == "X":
            return False, None
        if action == "P":
            return (ctx.pseudonym is not None), ctx.pseudonym
        if isinstance(value, (list, tuple)):
            items = []
            for v in value:
                if isinstance(v, (Mapping, pydicom.Dataset)):
                    items.append(self._meta_item(key, v, ctx)[1])
                    continue
                keep, new = self._meta_scalar(action, v, ctx)
                if not keep:
                    return False, None
                items.append(new)
            return True, items
        if isinstance(value, np.ndarray):
            return (True, value.copy()) if value.dtype.kind in "biufc" else (False, None)
        return self._meta_scalar(action, value, ctx)

    def _meta_scalar(self, action, value, ctx):
        if action == "T":
            if not isinstance(value, str):
                return False, None
            if re.fullmatch(r"[\d:.\s]*", value) and not re.match(r"\d{8}", value):
                return True, value  # a time of day (hh:mm:ss / hhmmss)
            if ctx.shift is None:
                return False, None
            new = _shift_date_text(value, ctx.shift)
            return (new is not None), new
        if action == "U":
            if not isinstance(value, str) or not re.fullmatch(r"\s*\d+(\.\d+)*\s*", value):
                return False, None
            return True, self._uid_value(value)
        if isinstance(value, str):
            return True, _scrub(value, ctx.pattern)
        if value is None or isinstance(value, (bool, int, float, complex)):
            return True, value
        try:
            import numpy as np

            if isinstance(value, np.generic):
                return True, value
        except ImportError:  # pragma: no cover
            pass
        try:
            return True, copy.deepcopy(value)
        except Exception:
            return True, value


class _Context:
    """What one de-identification needs: subject, shift, IOD types, identifiers."""

    __slots__ = ("deid", "key", "pseudonym", "shift", "types", "pattern")

    def __init__(self, *, deid, key, pseudonym, shift, types, pattern):
        self.deid = deid
        self.key = key
        self.pseudonym = pseudonym
        self.shift = shift
        self.types = types
        self.pattern = pattern


# sidecar keys that name a DICOM attribute under another name (dcm2niix)
_META_ALIASES = {
    "ProcedureStepDescription": "PerformedProcedureStepDescription",
    "ManufacturersModelName": "ManufacturerModelName",
    "InstitutionalDepartmentName": "InstitutionalDepartmentName",
}

_META_DATE_WORDS = frozenset({"date", "datetime", "birthday", "dob"})
_META_PHI_WORDS = frozenset({
    "patient", "patients", "subject", "physician", "physicians", "operator", "operators",
    "performer", "performing", "institution", "institutional", "address", "telephone",
    "phone", "email", "mail", "birth", "accession", "serial", "station", "comment",
    "comments", "referring", "requesting", "owner", "author", "examiner", "investigator",
    "hospital", "clinic", "ward", "room", "insurance", "ethnic", "religion", "occupation",
})
_META_SAFE_WORDS = frozenset({"position", "orientation"})

_WORD_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def _words(key: str) -> set[str]:
    """Lower-case words of a key: ``'VisuSubjectBirthDate'`` -> {visu, subject, birth, date}."""
    return {w.lower() for w in _WORD_RE.findall(key)}
