/**
 * NeuroNova: OHIF behind the NeuroNova gateway. Copied into OHIF's dist/ by the local stack
 * (neuronova/ohif.py) and by the nginx image (nginx/Dockerfile).
 *
 * Same-origin DICOMweb through the gate. Images are fetched as whole files by WADO-URI and
 * decoded in the browser (OpenJPH WebAssembly): Orthanc 1.10.1 labels WADO-RS frames of HTJ2K
 * as explicit little endian, and OHIF's WADO-RS loader trusts that label (grey images).
 * No study list: studies are opened by viewer links only.
 */
window.config = {
  name: 'neuronova',
  routerBasename: '/',
  extensions: [],
  modes: [],
  // No onboarding tour: it covers the viewport until dismissed, on every new browser profile.
  customizationService: { 'ohif.tours': { $set: [] } },
  showStudyList: false,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  groupEnabledModesFirst: true,
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  showErrorDetails: 'dev',
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'neuronova',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'neuronova',
      configuration: {
        friendlyName: 'NeuroNova archive',
        name: 'neuronova',
        qidoRoot: window.location.origin + '/dicom-web',
        wadoRoot: window.location.origin + '/dicom-web',
        wadoUriRoot: window.location.origin + '/wado',
        qidoSupportsIncludeField: false,
        supportsReject: false,
        imageRendering: 'wadouri',
        thumbnailRendering: 'wadouri',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: false,
        staticWado: false,
        singlepart: 'bulkdata,video,pdf',
        bulkDataURI: { enabled: false },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
